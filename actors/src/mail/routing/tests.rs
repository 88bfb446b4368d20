use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn peer(name: &str) -> Arc<PeerRoute> {
    Arc::new(PeerRoute {
        name: name.into(),
        outbox: format!("{name}.outbox"),
        broker: "b".into(),
        via: Via::LocalBroker,
    })
}

fn policy(unroutable: Unroutable) -> RoutePolicy {
    RoutePolicy {
        default_ips: vec![],
        max_hops: 2,
        unroutable,
        max_hold: Duration::from_secs(600),
    }
}

fn table() -> OwnershipTable {
    let t = OwnershipTable::new(&[ip("10.0.0.1")]);
    t.replace_peers(
        &[ip("10.0.0.1")],
        vec![(ip("10.0.0.2"), peer("b")), (ip("::2"), peer("c"))],
    );
    t
}

fn facts(ips: &[&str]) -> MessageFacts {
    MessageFacts {
        ips: Some(ips.iter().map(|s| ip(s)).collect()),
        ..MessageFacts::default()
    }
}

#[test]
fn decision_table() {
    let t = table();
    let hold = policy(Unroutable::Hold);
    let fail = policy(Unroutable::Fail);
    let local = policy(Unroutable::Local);
    let waiting = policy(Unroutable::Defer);
    let held_long = MessageFacts {
        held_for: Some(Duration::from_secs(601)),
        ..facts(&["192.0.2.9"])
    };
    let looped = MessageFacts {
        hops: 2,
        ..facts(&["10.0.0.2"])
    };
    let looped_but_local = MessageFacts {
        hops: 5,
        ..facts(&["10.0.0.1"])
    };
    let with_defaults = RoutePolicy {
        default_ips: vec![ip("10.0.0.2")],
        ..hold.clone()
    };
    let cases: Vec<(&str, MessageFacts, &RoutePolicy, &str)> = vec![
        ("local ip", facts(&["10.0.0.1"]), &hold, "deliver"),
        (
            "local wins over an earlier peer ip",
            facts(&["10.0.0.2", "10.0.0.1"]),
            &hold,
            "deliver",
        ),
        ("peer ip", facts(&["10.0.0.2"]), &hold, "handover b"),
        (
            "first peer ip wins",
            facts(&["::2", "10.0.0.2"]),
            &hold,
            "handover c",
        ),
        (
            "unknown then peer",
            facts(&["192.0.2.9", "::2"]),
            &hold,
            "handover c",
        ),
        ("loop", looped, &hold, "fail"),
        (
            "hops do not block local",
            looped_but_local,
            &hold,
            "deliver",
        ),
        ("unowned, hold", facts(&["192.0.2.9"]), &hold, "hold"),
        ("unowned, held too long", held_long, &hold, "fail"),
        ("unowned, fail", facts(&["192.0.2.9"]), &fail, "fail"),
        ("unowned, local", facts(&["192.0.2.9"]), &local, "deliver"),
        (
            "unowned, cluster unheard",
            facts(&["192.0.2.9"]),
            &waiting,
            "defer",
        ),
        (
            "owned, cluster unheard",
            facts(&["10.0.0.2"]),
            &waiting,
            "handover b",
        ),
        (
            "no ips, no defaults",
            MessageFacts::default(),
            &hold,
            "hold",
        ),
        (
            "no ips, default peer",
            MessageFacts::default(),
            &with_defaults,
            "handover b",
        ),
        (
            "empty ips, default peer",
            facts(&[]),
            &with_defaults,
            "handover b",
        ),
    ];
    for (name, facts, policy, want) in cases {
        let got = match decide(&facts, policy, &t) {
            Decision::Deliver => "deliver".to_string(),
            Decision::Handover(p) => format!("handover {}", p.name),
            Decision::Hold { .. } => "hold".to_string(),
            Decision::Fail { .. } => "fail".to_string(),
            Decision::Defer => "defer".to_string(),
        };
        assert_eq!(got, want, "case {name}");
    }
}

#[test]
fn extracts_ips_and_skips_the_rest() {
    let body = br#"{"envelope":"a@b.c","mime":"From: x\r\n\r\n{\"ips\":[\"9.9.9.9\"]}","ips":["10.0.0.1"," ::1 "],"recipient":"d@e.f"}"#;
    assert_eq!(extract_ips(body), Ok(Some(vec![ip("10.0.0.1"), ip("::1")])));
}

#[test]
fn ips_variants() {
    assert_eq!(extract_ips(br#"{"mime":"x"}"#), Ok(None));
    assert_eq!(extract_ips(br#"{"ips":null}"#), Ok(None));
    assert_eq!(extract_ips(br#"{"ips":{"a":1}}"#), Ok(None));
    assert_eq!(
        extract_ips(br#"{"ips":"10.0.0.1"}"#),
        Ok(Some(vec![ip("10.0.0.1")]))
    );
    assert_eq!(extract_ips(br#"{"ips":[]}"#), Ok(Some(vec![])));
    assert_eq!(
        extract_ips(br#"{"ips":["10.0.0.1"],"ips":["10.0.0.2"]}"#),
        Ok(Some(vec![ip("10.0.0.1")]))
    );
    assert_eq!(
        extract_ips(br#"{"ips":["\u0031\u0030.0.0.1"]}"#),
        Ok(Some(vec![ip("10.0.0.1")]))
    );
}

#[test]
fn parsing_stops_at_the_ips_field() {
    // Invalid UTF-8 in the MIME part would be an error if it were read.
    let mut body = br#"{"ips":["10.0.0.1"],"mime":""#.to_vec();
    body.extend_from_slice(&[0xff; 4096]);
    body.extend_from_slice(b"\"}\n");
    assert_eq!(
        extract_ips(&body),
        Ok(Some(vec!["10.0.0.1".parse().unwrap()]))
    );
    // Truncated: failed here, not passed on.
    assert!(matches!(
        extract_ips(br#"{"ips":["10.0.0.1"],"mime":"From: a"#),
        Err(Malformed::NotJson(_))
    ));
    // Without ips, the whole body is validated.
    assert!(matches!(
        extract_ips(br#"{"mime":"a" x}"#),
        Err(Malformed::NotJson(_))
    ));
}

#[test]
fn malformed_bodies_are_rejected_with_a_reason() {
    for body in [
        &b""[..],
        b"{",
        b"[1,2]",
        b"\"x\"",
        b"{\"ips\":[\"10.0.0.1\"]} trailing",
        b"\xff\xfe",
    ] {
        assert!(
            matches!(extract_ips(body), Err(Malformed::NotJson(_))),
            "{body:?}"
        );
    }
    assert_eq!(
        extract_ips(br#"{"ips":["10.0.0.1","nope"]}"#),
        Err(Malformed::BadIp {
            index: 1,
            value: "nope".into()
        })
    );
    assert!(matches!(
        extract_ips(br#"{"ips":[1]}"#),
        Err(Malformed::BadIp { index: 0, .. })
    ));
}

#[test]
fn local_ips_survive_a_peer_claim() {
    let t = OwnershipTable::new(&[ip("10.0.0.1")]);
    t.replace_peers(&[ip("10.0.0.1")], vec![(ip("10.0.0.1"), peer("thief"))]);
    assert_eq!(t.owner(&ip("10.0.0.1")), Some(Owner::Local));
    t.replace_peers(&[ip("10.0.0.1")], Vec::new());
    assert_eq!(t.len(), 1);
}
