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
