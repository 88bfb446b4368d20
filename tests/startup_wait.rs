//! A service started next to RabbitMQ must wait for it: `serve` retries with backoff, logging
//! each attempt, until the broker answers (here: a port that starts forwarding to RabbitMQ two
//! seconds later), then serves.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::TestVhost;
use common::servers::{Server, write_config};
use mailroute_actors::testkit::wait_for;

/// Forwards `listener`'s connections to RabbitMQ, from the moment it is called.
fn forward_to_rabbitmq(listener: std::net::TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    actix_rt::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            actix_rt::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

#[actix::test]
async fn serve_waits_for_a_broker_that_comes_up_later() {
    let vhost = TestVhost::new("startup");
    let dir = std::env::temp_dir().join(&vhost.name);
    std::fs::create_dir_all(&dir).unwrap();
    // Reserve a port, and free it so that nothing answers there yet.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let address = vhost
        .instance_address()
        .replace("127.0.0.1:5672", &format!("127.0.0.1:{port}"));
    let ip = IpAddr::from([10, 9, 1, 1]);
    let config = write_config(&dir, &address, "a", &[ip], "startup-timeout: 60s\n");
    let server = Server::spawn(&dir, "a", &config);
    wait_for("a retry logged", Duration::from_secs(30), || async {
        server.log_count("broker not reachable yet; retrying") >= 2
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    forward_to_rabbitmq(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
    wait_for(
        "serving once the broker is up",
        Duration::from_secs(60),
        || async { server.log_count("serving") == 1 },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_text()));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
