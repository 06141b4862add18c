//! Issue 23: the mass-removal guard. A catalog answer that removes more
//! than HAPROXY_REMOVAL_GUARD (default half) of the serving instances at
//! once is held for HAPROXY_REMOVAL_GUARD_GRACE: routing is unchanged, the
//! hold is reported (event, metric, /readyz reason, /status); answers that
//! still say so after the grace period apply it, SIGHUP applies it at once,
//! a full answer lifts it. One service's instances replaced (a deploy) is
//! never held. Real HAProxy, a real catalog file, real signals; each test
//! in its own network namespace. Run as root:
//! `cargo test --release --test removal_guard`.

use std::time::Duration;

use nix::sys::signal::Signal;
use testkit::*;

const STATUS: &str = "127.0.0.1:4445";
const API: &str = "api.example.com";

fn served(host: &str) -> Option<String> {
    match http_get(FRONT, host, "/", Duration::from_secs(2)) {
        Ok((200, body)) => Some(body.trim_end().to_string()),
        _ => None,
    }
}

fn status_json() -> serde_json::Value {
    let (code, body) =
        http_get(STATUS, "localhost", "/status", Duration::from_secs(2)).expect("/status");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/status is JSON")
}

fn metric(name: &str) -> Option<f64> {
    let (_, body) = http_get(STATUS, "localhost", "/metrics", Duration::from_secs(2)).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// www on two backends and api on one, served; the guard's grace as given.
fn start(grace: &str) -> (OrphanGuard, [Backend; 3], Files, Supervisor) {
    let (orphans, [a, b, c], files) = isolated::<3>();
    write_catalog(
        &files.catalog(),
        &[service("www", &[&a, &b], &[]), service("api", &[&c], &[])],
    );
    let mut env = env("seamless");
    env.push(("HAPROXY_REMOVAL_GUARD_GRACE", grace.into()));
    let sup = spawn_serving(&files.render_args(), &env);
    wait_until(T, "api serves", || served(API).is_some());
    (orphans, [a, b, c], files, sup)
}

#[test]
fn an_empty_answer_is_held_reported_and_applied_by_sighup() {
    let (_orphans, _backends, files, sup) = start("10m");
    let reloads = done_count(&sup);

    // Everything disappears (what an ACL that stops allowing service reads
    // looks like): held, routing unchanged.
    write_catalog(&files.catalog(), &[]);
    sup.wait_for_event(Event::RemovalHeld, T);
    let held = &sup.events(Event::RemovalHeld)[0]["fields"];
    assert_eq!(held["removed"], 3, "{held}");
    assert_eq!(held["serving"], 3, "{held}");
    assert_eq!(held["services"], 2, "{held}");
    for _ in 0..20 {
        assert!(served(WWW).is_some(), "www lost while the removal is held");
        assert_eq!(served(API).as_deref(), Some("web-3"));
    }
    let (code, body) = http_get(STATUS, "localhost", "/readyz", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("mass-removal guard"), "{body}");
    let st = status_json();
    assert_eq!(st["removal_held"]["removed"], 3, "{st}");
    assert_eq!(metric("haproxy_supervisor_removal_held"), Some(1.0));
    assert_eq!(done_count(&sup), reloads, "a held answer started a process");

    // SIGHUP confirms: the services go.
    sup.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_until(T, "the removal applies", || {
        sup.has_event(Event::RemovalApplied)
    });
    assert_eq!(
        sup.events(Event::RemovalApplied)[0]["fields"]["by"],
        "sighup"
    );
    // Both go with one reload; until the old process has stopped
    // accepting (seamless: it shares the listening socket for a moment), a
    // request may still reach it.
    wait_until(T, "www and api are gone", || {
        served(WWW).is_none() && served(API).is_none()
    });
    wait_until(T, "/status no longer reports a hold", || {
        status_json()["removal_held"].is_null()
    });
    assert_eq!(metric("haproxy_supervisor_removal_held"), Some(0.0));
    println!("empty answer: held (3 of 3 instances), routing kept; SIGHUP applied it");
}

#[test]
fn a_held_removal_applies_after_the_grace_or_lifts_when_answers_recover() {
    let (_orphans, [a, b, c], files, sup) = start("2s");

    // Lifted: the full answer comes back before the grace ends.
    write_catalog(&files.catalog(), &[service("www", &[&a], &[])]);
    sup.wait_for_event(Event::RemovalHeld, T);
    write_catalog(
        &files.catalog(),
        &[service("www", &[&a, &b], &[]), service("api", &[&c], &[])],
    );
    wait_until(T, "the hold lifts", || sup.has_event(Event::RemovalApplied));
    assert_eq!(
        sup.events(Event::RemovalApplied)[0]["fields"]["by"],
        "recovered"
    );
    assert_eq!(served(API).as_deref(), Some("web-3"));

    // Confirmed: the same removal is still the answer after the grace.
    write_catalog(&files.catalog(), &[service("www", &[&a], &[])]);
    wait_until(T, "held again", || {
        sup.events(Event::RemovalHeld).len() == 2
    });
    assert_eq!(
        served(API).as_deref(),
        Some("web-3"),
        "applied before the grace"
    );
    wait_until(T, "applied after the grace", || {
        sup.events(Event::RemovalApplied).len() == 2
    });
    assert_eq!(
        sup.events(Event::RemovalApplied)[1]["fields"]["by"],
        "grace"
    );
    wait_until(T, "api is gone", || served(API).is_none());
    assert_eq!(served(WWW).as_deref(), Some("web-1"));
}

#[test]
fn a_deploy_replacing_one_service_is_never_held() {
    let (_orphans, [a, b, c], files, sup) = start("10m");
    let d = Backend::start("web-4");
    let e = Backend::start("web-5");
    // www's two instances replaced by two new ones (new ids): 2 of 3
    // serving instances removed at once, but www keeps serving.
    let mut www = service("www", &[&d, &e], &[]);
    for (i, inst) in www["instances"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        inst["id"] = format!("www-v2-{i}").into();
    }
    write_catalog(&files.catalog(), &[www, service("api", &[&c], &[])]);
    wait_until(T, "the new instances serve", || {
        (0..10).any(|_| served(WWW).as_deref() == Some("web-4"))
            && (0..10).any(|_| served(WWW).as_deref() == Some("web-5"))
    });
    wait_until(T, "the old instances are gone", || {
        (0..10).all(|_| !matches!(served(WWW).as_deref(), Some("web-1") | Some("web-2")))
    });
    assert!(!sup.has_event(Event::RemovalHeld), "a deploy was held");
    drop((a, b));
}
