//! WebSockets through the HTTP routing (issue #22's WebSocket part), on the
//! host's HAProxy (2.6), measured: an upgraded connection survives live
//! changes; across a reload it stays on the old process until
//! `hard-stop-after` ends it; an idle one is closed after `timeout tunnel`
//! (`HAPROXY_TIMEOUT_TUNNEL`). The demo backend answers the handshake with
//! 101 and echoes. Run as root: `cargo test --release --test websockets`.

use std::time::{Duration, Instant};

use testkit::*;

/// Echoes through every tunnel; the failures.
fn echo_all(tunnels: &mut [Tunnel], what: &str) -> Vec<String> {
    tunnels
        .iter_mut()
        .enumerate()
        .filter_map(|(i, t)| {
            t.echo(&format!("{what} {i}\n"))
                .err()
                .map(|e| format!("tunnel {i} after {what}: {e}"))
        })
        .collect()
}

#[test]
fn a_websocket_survives_live_changes_and_a_reload_until_hard_stop_after() {
    let (_orphans, [a, b, c], files) = isolated::<3>();
    write_catalog(&files.catalog(), &[service("www", &[&a], &[])]);
    let mut envs = env("inherit");
    envs.push(("HAPROXY_HARD_STOP_AFTER", "3s".into()));
    let sup = spawn_serving(&files.render_args(), &envs);
    let pid = logged_serving_pid(&sup).expect("a serving pid");
    let mut tunnels: Vec<Tunnel> = (0..5).map(|_| Tunnel::open(WWW)).collect();

    // Live: an instance added, then the first one removed (its server is
    // parked while the tunnels hold it, not cut).
    write_catalog(&files.catalog(), &[service("www", &[&a, &b], &[])]);
    wait_until(T, "web-2 serves", || {
        (0..6).any(|_| served_by(WWW, "/").as_deref() == Some("web-2"))
    });
    let cut = echo_all(&mut tunnels, "an instance added");
    assert!(cut.is_empty(), "{cut:?}");
    write_catalog(&files.catalog(), &[service("www", &[&b], &[])]);
    wait_until(T, "only web-2 serves", || {
        (0..6).all(|_| served_by(WWW, "/").as_deref() == Some("web-2"))
    });
    let cut = echo_all(&mut tunnels, "its instance removed");
    assert!(cut.is_empty(), "{cut:?}");
    assert_eq!(logged_serving_pid(&sup), Some(pid), "a process started");

    // A reload (a new service, on 2.6): the tunnels stay with the old
    // process, which serves them until hard-stop-after (3 s) ends it.
    write_catalog(
        &files.catalog(),
        &[service("www", &[&b], &[]), service("api", &[&c], &[])],
    );
    wait_done(&sup, 2, T);
    let reloaded = Instant::now();
    let cut = echo_all(&mut tunnels, "the reload");
    assert!(cut.is_empty(), "{cut:?}");
    // A new one goes to the new process, and outlives the old.
    let mut fresh = Tunnel::open(WWW);
    let mut cut_after: Vec<Option<Duration>> = vec![None; tunnels.len()];
    while cut_after.iter().any(Option::is_none) && reloaded.elapsed() < Duration::from_secs(15) {
        for (t, cut) in tunnels.iter_mut().zip(cut_after.iter_mut()) {
            if cut.is_none() && t.echo("ping\n").is_err() {
                *cut = Some(reloaded.elapsed());
            }
        }
        fresh
            .echo("fresh\n")
            .expect("the tunnel on the new process");
    }
    let cut_after: Vec<Duration> = cut_after.into_iter().flatten().collect();
    println!("websocket across a reload: 5 tunnels kept by the old process, cut {cut_after:?} after it (hard-stop-after 3s)");
    assert_eq!(
        cut_after.len(),
        5,
        "tunnels never cut: the old process did not stop"
    );
    // Kept past the reload (each echoed right after it, above), and ended
    // by hard-stop-after, not by anything sooner.
    for d in &cut_after {
        assert!(
            *d >= Duration::from_millis(1500),
            "a tunnel was cut {d:?} after the reload, long before hard-stop-after (3s)"
        );
    }
    fresh
        .echo("after\n")
        .expect("the tunnel on the new process");
}

#[test]
fn an_idle_websocket_is_closed_after_timeout_tunnel() {
    let (_orphans, [a], files) = isolated::<1>();
    write_catalog(&files.catalog(), &[service("www", &[&a], &[])]);
    let mut envs = env("inherit");
    envs.push(("HAPROXY_TIMEOUT_TUNNEL", "1s".into()));
    let _sup = spawn_serving(&files.render_args(), &envs);

    // Busy (a message every 300 ms) for 3 s: open all along.
    let mut busy = Tunnel::open(WWW);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        busy.echo("busy\n").expect("a busy tunnel stays open");
        assert!(!busy.closed_within(Duration::from_millis(300)));
    }
    // Idle: closed after about a second.
    let mut idle = Tunnel::open(WWW);
    idle.echo("once\n").unwrap();
    let idle_since = Instant::now();
    assert!(
        idle.closed_within(Duration::from_secs(10)),
        "an idle tunnel is still open after 10 s (timeout tunnel 1s)"
    );
    let after = idle_since.elapsed();
    println!("idle websocket closed {after:?} after its last message (timeout tunnel 1s)");
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before timeout tunnel"
    );
}

/// The `www` service on `backends` (instance `www-<port>`, its weight).
fn www(backends: &[(&Backend, u32)]) -> serde_json::Value {
    let instances: Vec<serde_json::Value> = backends
        .iter()
        .map(|(b, w)| {
            serde_json::json!({
                "id": format!("www-{}", b.port()),
                "address": "127.0.0.1",
                "port": b.port(),
                "tags": ["HAPROXY.ENABLE=true"],
                "weight": w,
            })
        })
        .collect();
    serde_json::json!({ "name": "www", "instances": instances })
}

#[test]
fn fifty_websockets_across_a_hundred_live_changes_then_reloads_reported() {
    let (_orphans, [a, b, c, d, e], files) = isolated::<5>();
    write_catalog(&files.catalog(), &[www(&[(&a, 1), (&b, 1)])]);
    let mut envs = env("inherit");
    envs.push(("HAPROXY_HARD_STOP_AFTER", "3s".into()));
    let sup = spawn_serving(&files.render_args(), &envs);
    let pid = logged_serving_pid(&sup).expect("a serving pid");
    let mut tunnels: Vec<Tunnel> = (0..50).map(|_| Tunnel::open(WWW)).collect();

    // 100 live changes: instances c and d come and go (set into
    // maintenance and deleted once idle), a's and b's weights move; the
    // tunnels sit on a and b. After each applied change every tunnel
    // echoes.
    let live = |sup: &Supervisor| sup.events(Event::LiveApplied).len();
    let mut cut = Vec::new();
    for i in 0..100u32 {
        let wa = 1 + i % 5;
        let wb = 1 + (i / 3) % 4;
        let mut set = vec![(&a, wa), (&b, wb)];
        if i % 4 < 2 {
            set.push((&c, 1));
        }
        if i % 6 >= 3 {
            set.push((&d, 2));
        }
        let before = live(&sup);
        write_catalog(&files.catalog(), &[www(&set)]);
        wait_until(T, "the change applied live", || live(&sup) > before);
        cut.extend(echo_all(&mut tunnels, &format!("live change {i}")));
    }
    assert!(cut.is_empty(), "tunnels cut by live changes: {cut:?}");
    assert_eq!(logged_serving_pid(&sup), Some(pid), "a process started");
    assert_eq!(done_count(&sup), 1, "a live change reloaded");
    println!("50 websockets across 100 live changes: 0 cut, HAProxy pid {pid} throughout");

    // Reloads (a new service each, on 2.6): the 50 stay with the first
    // process, which serves them until hard-stop-after (3 s) ends it;
    // reported: how many are cut, and when.
    let first_reload = Instant::now();
    for (n, svc) in [("api", &e), ("api2", &e), ("api3", &e)].iter().enumerate() {
        write_catalog(
            &files.catalog(),
            &[www(&[(&a, 1), (&b, 1)]), service(svc.0, &[svc.1], &[])],
        );
        wait_done(&sup, 2 + n, T);
    }
    let reloads_took = first_reload.elapsed();
    let mut cut_after: Vec<Option<Duration>> = vec![None; tunnels.len()];
    while cut_after.iter().any(Option::is_none) && first_reload.elapsed() < Duration::from_secs(15)
    {
        for (t, cut) in tunnels.iter_mut().zip(cut_after.iter_mut()) {
            if cut.is_none() && t.echo("ping\n").is_err() {
                *cut = Some(first_reload.elapsed());
            }
        }
    }
    let mut times: Vec<Duration> = cut_after.iter().flatten().copied().collect();
    times.sort();
    let (first, last) = (times.first().copied(), times.last().copied());
    println!(
        "50 websockets across 3 reloads ({reloads_took:?} for the three): {} cut, the first {first:?} and the last {last:?} after the first reload (hard-stop-after 3s)",
        times.len()
    );
    assert_eq!(
        times.len(),
        50,
        "tunnels never cut: the old process did not stop"
    );
    assert!(
        first.unwrap() >= Duration::from_millis(1500),
        "a tunnel was cut {first:?} after the first reload, long before hard-stop-after (3s)"
    );
    // New ones go to the serving process.
    let mut fresh = Tunnel::open(WWW);
    fresh.echo("fresh\n").expect("a tunnel on the new process");
}
