//! The HTTP port in-process: its routes, its credentials, and hostile clients (slow headers,
//! huge headers, connection floods) that must leave the taskmill port and other addresses
//! unharmed.

use std::time::{Duration, Instant};

use taskmill_broker::http::{HttpAuth, HttpConfig};
use taskmill_protocol::{Outcome, Wait};
use taskmill_testkit::http::{get, get_from, parse};
use taskmill_testkit::{b, config, connect_from, within, TestMaster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "http-test-secret-0123456789";

/// Short limits, so each hostile kind is met and ended within the test.
fn http_config() -> HttpConfig {
    HttpConfig {
        max_connections: 24,
        max_connections_per_ip: 8,
        header_timeout: Duration::from_millis(500),
        connection_lifetime: Duration::from_secs(5),
        ..HttpConfig::default()
    }
}

/// Reads until the peer closes; what it sent.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn every_route_answers_and_api_stats_is_the_stats_json_document() {
    let (master, http) = TestMaster::start_with_http(config(), HttpConfig::default()).await;
    let mut client = master.client().await;
    client
        .put("jobs", vec![b("a"), b("b")], Wait::No)
        .await
        .unwrap();

    let health = get(http, "/healthz", &[]).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let stats = get(http, "/api/stats", &[]).await;
    assert_eq!(stats.header("content-type"), Some("application/json"));
    let stats: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
    assert_eq!(stats["master"], master.addr.as_str());
    assert_eq!(stats["queues"][0]["name"], "jobs");
    assert_eq!(stats["queues"][0]["size"], 2);
    assert_eq!(stats["clients"], 1);

    let page = get(http, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<canvas id=\"chart-throughput\""));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'sha256-") && csp.contains("default-src 'none'"));

    let metrics = get(http, "/metrics", &[]).await;
    assert!(metrics
        .body
        .contains("taskmill_queue_depth{queue=\"jobs\"} 2"));
    assert!(metrics.body.ends_with("# EOF\n"));

    let dashboard = get(http, "/api/dashboard", &[]).await;
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard.body).unwrap();
    assert_eq!(dashboard["workers"].as_array().unwrap().len(), 1);
    assert_eq!(dashboard["queues"][0]["depth"], 2);

    assert_eq!(get(http, "/nowhere", &[]).await.status, 404);
    let mut post = TcpStream::connect(http).await.unwrap();
    post.write_all(
        b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let post = parse(&within("a POST's answer", until_closed(&mut post)).await).unwrap();
    assert_eq!(post.status, 405);
    master.stop().await;
}

#[tokio::test]
async fn credentials_are_needed_when_configured_and_guessing_throttles_only_that_address() {
    let http_config = HttpConfig {
        auth: Some(HttpAuth::new(SECRET.as_bytes()).unwrap()),
        auth_failures_per_minute: 3,
        ..http_config()
    };
    let (master, http) = TestMaster::start_with_http(config(), http_config).await;
    let bearer = format!("Bearer {SECRET}");

    assert_eq!(
        get(http, "/healthz", &[]).await.status,
        200,
        "health needs no key"
    );
    let missing = get(http, "/metrics", &[]).await;
    assert_eq!(missing.status, 401);
    assert!(missing
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic"));
    let ok = get(http, "/metrics", &[("authorization", &bearer)]).await;
    assert_eq!(ok.status, 200);

    let guesser = [127, 0, 0, 9];
    for _ in 0..3 {
        let wrong = get_from(
            guesser,
            http,
            "/",
            &[("authorization", "Bearer guess-guess-guess")],
        )
        .await;
        assert_eq!(wrong.status, 401);
    }
    let throttled = get_from(guesser, http, "/", &[("authorization", &bearer)]).await;
    assert_eq!(
        throttled.status, 429,
        "even the right key, from a throttled address"
    );
    let elsewhere = get_from([127, 0, 0, 10], http, "/", &[("authorization", &bearer)]).await;
    assert_eq!(elsewhere.status, 200, "other addresses are not affected");
    let metrics = get(http, "/metrics", &[("authorization", &bearer)]).await;
    assert!(metrics.body.contains("taskmill_http_auth_failures_total 3"));
    assert!(metrics
        .body
        .contains("taskmill_http_connections_refused_total{reason=\"throttled\"} 1"));
    master.stop().await;
}

#[tokio::test]
async fn hostile_http_clients_neither_hurt_the_taskmill_port_nor_lock_out_other_addresses() {
    let (master, http) = TestMaster::start_with_http(config(), http_config()).await;
    let started = Instant::now();

    // Slow headers: a byte at a time, from one address, up to its per-address limit.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = connect_from([127, 0, 0, 2], http).await.unwrap();
                let opened = Instant::now();
                for byte in b"GET / HTTP/1.1\r\nx-slow: ".iter().cycle().take(400) {
                    if s.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                until_closed(&mut s).await;
                opened.elapsed()
            })
        })
        .collect();
    // Huge headers: a megabyte of them, which the server must refuse without buffering.
    let huge = tokio::spawn(async move {
        let mut s = connect_from([127, 0, 0, 3], http).await.unwrap();
        let mut head = b"GET / HTTP/1.1\r\nhost: x\r\n".to_vec();
        while head.len() < 1 << 20 {
            head.extend_from_slice(
                b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let _ = s.write_all(&head).await;
        until_closed(&mut s).await
    });
    // A flood of idle connections from one address: most are refused at accept.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(connect_from([127, 0, 0, 4], http).await.unwrap());
    }

    // Requests as fast as eight keep-alive connections can send them, from another address.
    let hammering = tokio_util::sync::CancellationToken::new();
    let hammers: Vec<_> = (0..8)
        .map(|_| {
            let stop = hammering.clone();
            tokio::spawn(async move {
                let mut s = connect_from([127, 0, 0, 6], http).await.unwrap();
                let request = b"GET /api/dashboard HTTP/1.1\r\nhost: x\r\n\r\n";
                let mut buf = vec![0u8; 1 << 16];
                let mut answered = 0u32;
                while !stop.is_cancelled() {
                    if s.write_all(request).await.is_err() {
                        break;
                    }
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => answered += 1,
                        _ => break,
                    }
                }
                answered
            })
        })
        .collect();

    // Meanwhile the taskmill port serves a small job without delay.
    let mut client = within("connect", async { master.client().await }).await;
    let items: Vec<_> = (0..2000).map(|i| b(&i.to_string())).collect();
    client.put("tasks", items, Wait::No).await.unwrap();
    let mut done = 0;
    while done < 2000 {
        let tasks = within("leasing", client.get("tasks", 500, Wait::Millis(1000)))
            .await
            .unwrap();
        let outcomes = tasks
            .iter()
            .map(|t| Outcome {
                task: t.id,
                result: t.payload.clone(),
            })
            .collect();
        done += client
            .complete("tasks", "results", outcomes, Wait::No)
            .await
            .unwrap()
            .done as usize;
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the job was held up"
    );
    hammering.cancel();
    let mut answered = 0;
    for h in hammers {
        answered += within("a hammering client to stop", h).await.unwrap();
    }
    assert!(
        answered > 8,
        "the hammering clients were served: {answered}"
    );

    // Another address still gets its answers while the flood holds its slots.
    let health = within(
        "health from elsewhere",
        get_from([127, 0, 0, 5], http, "/healthz", &[]),
    )
    .await;
    assert_eq!(health.status, 200);

    // Slow headers were cut at the header timeout (500 ms), not after their 8 s of trickle.
    for s in slow {
        let lasted = within("a slow client to be cut off", s).await.unwrap();
        assert!(
            lasted < Duration::from_secs(4),
            "a slow header lasted {lasted:?}"
        );
    }
    let answer = within("the huge header's refusal", huge).await.unwrap();
    if let Some(response) = parse(&answer) {
        assert_eq!(response.status, 431);
    }
    // The flood's refused connections were closed, told why while refusal slots lasted.
    let (mut told, mut closed) = (0, 0);
    for s in &mut flood {
        let mut buf = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            told += usize::from(buf[..n].starts_with(b"HTTP/1.1 503"));
            closed += usize::from(n == 0);
        }
    }
    assert!(
        told > 0 && told + closed >= 90,
        "{told} told, {closed} closed, of 100"
    );
    drop(flood);

    let metrics = within("metrics", get(http, "/metrics", &[])).await;
    let line = metrics
        .body
        .lines()
        .find(|l| {
            l.starts_with("taskmill_http_connections_refused_total{reason=\"handshake_limit\"}")
        })
        .unwrap()
        .to_owned();
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 90, "{line}");
    assert!(metrics
        .body
        .contains("taskmill_connections_refused_total{reason=\"handshake_limit\"} 0"));
    master.stop().await;
}
