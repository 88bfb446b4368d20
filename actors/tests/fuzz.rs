//! Property tests standing in for a fuzzer (CI has no nightly toolchain for `cargo fuzz`): the
//! cluster codec and the outbox message parser take arbitrary bytes without panicking, and
//! whatever they accept means what it says. Failing inputs are kept by proptest under
//! `proptest-regressions/` and replayed first on every run.

use std::net::IpAddr;
use std::time::Duration;

use mailroute_actors::broker::{HeaderValue, Message, Properties};
use mailroute_actors::cluster::wire::{Announcement, ClusterMessage, Codec};
use mailroute_actors::mail::routing::{
    OwnershipTable, RoutePolicy, Unroutable, extract_ips, route_message,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 4096,
        ..ProptestConfig::default()
    }
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from)
    ]
}

fn message() -> impl Strategy<Value = ClusterMessage> {
    let announcement = (
        "[a-z0-9.-]{1,40}",
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(ip(), 0..50),
        ".{0,60}",
        proptest::option::of(".{0,60}"),
    )
        .prop_map(
            |(name, started_at, sequence, local_ips, outbox, console_url)| {
                ClusterMessage::Announcement(Announcement {
                    name,
                    version: "0.1.0".into(),
                    started_at,
                    sequence,
                    local_ips,
                    outbox,
                    broker: "127.0.0.1:5672//".into(),
                    console_url,
                    config_hash: "00".into(),
                    ..Default::default()
                })
            },
        );
    prop_oneof![
        announcement,
        (".{0,40}", any::<u64>())
            .prop_map(|(name, started_at)| ClusterMessage::Leaving { name, started_at }),
        proptest::option::of(".{0,20}").prop_map(|from| ClusterMessage::Hello { from }),
        proptest::option::of(".{0,20}").prop_map(|from| ClusterMessage::Reload { from }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_codec(bytes in proptest::collection::vec(any::<u8>(), 0..512), now in any::<u64>()) {
        let _ = Codec::default().decode(&bytes, now);
        let _ = Codec::new(Some("k"), Duration::from_secs(30)).decode(&bytes, now);
        let mut framed = b"MR\x01\x00\0\0\0\0\0\0\0\0".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = Codec::default().decode(&framed, now);
    }

    #[test]
    fn every_message_round_trips(m in message(), now in 0u64..u64::MAX / 2) {
        let open = Codec::default();
        prop_assert_eq!(open.decode(&open.encode(&m, now).unwrap(), now), Ok(m.clone()));
        let signed = Codec::new(Some("secret"), Duration::from_secs(30));
        prop_assert_eq!(signed.decode(&signed.encode(&m, now).unwrap(), now + 29_000), Ok(m));
    }

    #[test]
    fn a_mutated_signed_frame_is_never_accepted(m in message(), at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<bool>()) {
        let signed = Codec::new(Some("secret"), Duration::from_secs(30));
        let now = 1_800_000_000_000;
        let mut frame = signed.encode(&m, now).unwrap();
        if cut {
            frame.truncate(at.index(frame.len()));
        } else {
            let i = at.index(frame.len());
            frame[i] ^= 1 << bit;
        }
        prop_assert!(signed.decode(&frame, now).is_err());
    }

    #[test]
    fn arbitrary_bodies_never_panic_the_parser(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = extract_ips(&body);
        let mut json = b"{\"ips\":".to_vec();
        json.extend_from_slice(&body);
        let _ = extract_ips(&json);
    }

    #[test]
    fn listed_ips_are_found_wherever_they_stand(ips in proptest::collection::vec(ip(), 0..20), mime in ".{0,200}", before in any::<bool>()) {
        let list: Vec<String> = ips.iter().map(|ip| format!("{:?}", ip.to_string())).collect();
        let ips_json = format!("\"ips\":[{}]", list.join(","));
        let mime_json = format!("\"mime\":{}", serde_json::to_string(&mime).unwrap());
        let body = if before { format!("{{{ips_json},{mime_json}}}") } else { format!("{{{mime_json},{ips_json}}}") };
        prop_assert_eq!(extract_ips(body.as_bytes()), Ok(Some(ips)));
    }

    #[test]
    fn routing_arbitrary_messages_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256), hops in any::<i64>(), held in any::<i64>(), now in any::<u64>()) {
        let table = OwnershipTable::new(&["10.0.0.1".parse().unwrap()]);
        let policy = RoutePolicy { default_ips: vec![], max_hops: 2, unroutable: Unroutable::Hold, max_hold: Duration::from_secs(60) };
        let mut properties = Properties::default();
        properties.headers.insert("x-mailroute-hops".into(), HeaderValue::I64(hops));
        properties.headers.insert("x-mailroute-held-since".into(), HeaderValue::I64(held));
        let _ = route_message(&Message::new(body, properties), &policy, &table, now);
    }
}
