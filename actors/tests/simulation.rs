//! A deterministic simulation of the membership core (`mailroute_actors::cluster::membership`), in
//! both protocols: N cores on a simulated cluster exchange with seeded delays, loss,
//! duplication and reordering, one-way partitions, deaf, frozen and CPU-starved instances,
//! joins, leaves and silent deaths, in simulated time; in digest mode also the leader's core
//! on a simulated heartbeat queue (single active consumer, prefetch, TTL, redelivery when the
//! leader's link goes). After every step it checks:
//! - nobody forgets a live peer it had news of within `peer-timeout`;
//! - an instance that hears nothing (mesh) or gets no digest (digest) forgets nobody;
//! - a dead peer is forgotten by every hearing instance in time;
//! - once the faults are over and the cluster settled, nobody forgets anyone live, and
//!   every instance routes every IP to its live owner.
//!
//! A failing seed prints itself; `SIM_SEED=<seed> cargo test --test simulation` replays it.

mod sim;

use std::time::Duration;

use mailroute_actors::settings::ClusterProtocol;
use sim::{INTERVAL, Options, PEER_TIMEOUT, Sim, Violation};

/// One seeded run: a cluster starts, faults come for a while, then a calm long enough for
/// everyone to agree.
fn run_seed(seed: u64, options: Options) -> Result<(), Violation> {
    let digest = options.protocol == ClusterProtocol::Digest;
    let mut sim = Sim::new(seed, options);
    let n = 3 + sim.rng.below(10) as usize;
    for _ in 0..n {
        sim.start_node();
    }
    // Digest mode: a member no digest vouched for yet has two peer-timeouts.
    let start = if digest {
        PEER_TIMEOUT * 2
    } else {
        PEER_TIMEOUT
    };
    sim.run(start)?;
    let faults = 1 + sim.rng.below(6);
    for _ in 0..faults {
        sim.fault();
        let gap = sim.rng.millis(500, 8_000);
        sim.run(sim.now + gap)?;
    }
    // Calm: no loss, short trips; cuts, deafness and freezes end within 15 s. From then on
    // nobody may forget a live peer.
    let settle = Duration::from_secs(15) + PEER_TIMEOUT * 2;
    sim.calm(settle);
    let end = sim.now + settle + Duration::from_secs(5) + INTERVAL * 2;
    sim.run(end)?;
    sim.check_agreement()
}

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        // `SIM_SEEDS=<count>` runs more (a release build runs thousands in seconds).
        Err(_) => (1..=env_or("SIM_SEEDS", 300)).collect(),
    }
}

fn every_seed_holds(protocol: ClusterProtocol) {
    for seed in seeds() {
        if let Err(violation) = run_seed(seed, Options::new(protocol)) {
            panic!(
                "{protocol:?} seed {seed}: {violation}\nreplay: SIM_SEED={seed} cargo test --test simulation"
            );
        }
    }
}

#[test]
fn mesh_membership_holds_its_invariants_under_seeded_faults() {
    every_seed_holds(ClusterProtocol::Mesh);
}

#[test]
fn digest_membership_holds_its_invariants_under_seeded_faults() {
    every_seed_holds(ClusterProtocol::Digest);
}

/// The simulator catches the bug it is there for: a core without the guard that keeps a deaf
/// registry from expiring its peers breaks an invariant within the seeds run.
#[test]
fn a_core_without_the_deafness_guard_is_caught() {
    for protocol in [ClusterProtocol::Mesh, ClusterProtocol::Digest] {
        let caught = seeds().into_iter().find_map(|seed| {
            let mut options = Options::new(protocol);
            options.unguarded = true;
            run_seed(seed, options).err().map(|v| (seed, v))
        });
        let (seed, violation) = caught.expect("the unguarded core passed every seed");
        println!("SIMULATION | {protocol:?}: the unguarded core fails seed {seed}: {violation}");
        assert!(violation.contains("deaf"), "{violation}");
    }
}

/// What a scale run measured, in simulated time.
#[derive(Debug)]
struct Scale {
    /// From the start until every instance routes every IP to its owner.
    start: Option<Duration>,
    /// From a silent death until nobody lists the dead.
    death: Option<Duration>,
    /// From a join until everyone agrees again.
    join: Option<Duration>,
    expired_heartbeats: u64,
    frames: u64,
}

/// Runs until `done` or `deadline` after now, in steps of 100 ms; how long it took.
fn until(
    sim: &mut Sim,
    deadline: Duration,
    done: impl Fn(&Sim) -> bool,
) -> Result<Option<Duration>, Violation> {
    let from = sim.now;
    while sim.now < from + deadline {
        sim.run(sim.now + Duration::from_millis(100))?;
        if done(sim) {
            return Ok(Some(sim.now - from));
        }
    }
    Ok(None)
}

/// N instances on machines where each frame costs `cost` to process start together; then one
/// dies silently, then one joins. Each phase has a minute to settle.
fn scale(
    n: usize,
    cost: Duration,
    leader_cost: Duration,
    options: Options,
    seed: u64,
) -> Result<Scale, Violation> {
    let mut sim = Sim::new(seed, options);
    for _ in 0..n {
        let node = sim.start_node();
        sim.load(node, cost);
    }
    // The first to subscribe to the heartbeat queue leads.
    sim.load(0, leader_cost);
    let minute = Duration::from_secs(60);
    let agreed = |sim: &Sim| sim.check_agreement().is_ok();
    let start = until(&mut sim, minute, agreed)?;
    // Settled: from here on nobody may forget a live peer.
    sim.calm(Duration::ZERO);
    let leader = sim.digest_leader();
    let victim = (0..n).find(|i| Some(*i) != leader).unwrap_or(0);
    sim.die(victim);
    let name = sim.nodes[victim].name.clone();
    let death = until(&mut sim, minute, |sim| {
        sim.nodes
            .iter()
            .filter(|n| n.alive)
            .all(|n| !n.core.knows(&name))
    })?;
    let joined = sim.start_node();
    sim.load(joined, cost);
    let join = until(&mut sim, minute, agreed)?;
    Ok(Scale {
        start,
        death,
        join,
        expired_heartbeats: sim.heartbeats_expired(),
        frames: sim.processed,
    })
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `SIM_N` instances (default 100; `SIM_N=1000` with `--release`) in digest mode on loaded
/// machines (`SIM_COST_US` per frame, default 500 µs): every phase agrees within a minute of
/// simulated time, and nobody forgets a live peer once the start agreed.
#[test]
fn loaded_digest_instances_agree_after_every_phase() {
    let n = env_or("SIM_N", 100);
    let cost = Duration::from_micros(env_or("SIM_COST_US", 500));
    let seed = env_or("SIM_SEED", 1);
    let began = std::time::Instant::now();
    let mut options = Options::new(ClusterProtocol::Digest);
    options.leader_unguarded = std::env::var("SIM_LEADER_UNGUARDED").is_ok();
    if let Some(ms) = std::env::var("SIM_HEARTBEAT_TTL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.heartbeat_ttl = Duration::from_millis(ms);
    }
    // `SIM_LEADER_COST_US`: the leader's machine is slower still.
    let leader_cost = Duration::from_micros(env_or("SIM_LEADER_COST_US", cost.as_micros() as u64));
    let report =
        scale(n, cost, leader_cost, options, seed).unwrap_or_else(|v| panic!("seed {seed}: {v}"));
    println!(
        "SIMULATION | digest N={n} cost={cost:?}: agreed {:?} after the start, the dead forgotten {:?} after the death, agreed {:?} after the join; {} heartbeats expired in the queue, {} frames, {:?} real",
        report.start,
        report.death,
        report.join,
        report.expired_heartbeats,
        report.frames,
        began.elapsed()
    );
    assert!(report.start.is_some(), "{report:?}");
    assert!(report.death.is_some(), "{report:?}");
    assert!(report.join.is_some(), "{report:?}");
}

/// The 143-of-998 mechanism, in seconds: a leader that reads the heartbeat queue late (its
/// machine takes 15 ms a frame, 100 members) took its own backlog for its members' silence,
/// and registries forgot live members in a calm cluster. The leader now measures silence on
/// the queue's clock (its own heartbeat's wait) and sends no digests while far behind.
#[test]
fn a_lagging_leader_makes_nobody_forget_a_live_member() {
    let cost = Duration::from_micros(500);
    let slow = Duration::from_millis(15);
    let options = Options::new(ClusterProtocol::Digest);
    let report = scale(100, cost, slow, options, 1).unwrap_or_else(|v| panic!("{v}"));
    println!("SIMULATION | a lagging leader (15 ms a frame, N=100): {report:?}");
    assert!(
        report.start.is_some() && report.death.is_some() && report.join.is_some(),
        "{report:?}"
    );
    let mut options = Options::new(ClusterProtocol::Digest);
    options.leader_unguarded = true;
    let violation = scale(100, cost, slow, options, 1).expect_err("the unguarded leader passed");
    println!("SIMULATION | the leader without the lag guard: {violation}");
    assert!(violation.contains("forgot live"), "{violation}");
}
