//! The catalog changes of the change scenarios, and the catalog every
//! supervisor scenario starts on.
//!
//! Every supervisor scenario starts on the same catalog: service `www`
//! (the one the clients load) with `www-1` on backend 0 and `www-2` on
//! backend 1, and one seed service per backend profile the structural
//! rotation moves `www` through ([`SEEDS`]), on backend 2. The seeds keep
//! every such profile running from the start (a profile nothing runs is
//! config text: one reload on any HAProxy), so on HAProxy 3.4 every
//! structural change of the rotation can be applied live. No load goes to
//! the seeds; their health checks (every 10 s) are all they cost.

use std::net::SocketAddr;

use serde_json::{json, Value};

/// One round of the server-only changes (`live`, `live-off`), in order.
pub(crate) const CHANGE_KINDS: [&str; 6] = [
    "add",        // www-3 added on backend 2
    "weight",     // www-1's weight 1 ↔ 3
    "check-fail", // www-2 not passing: leaves the rendered config
    "move",       // www-3 moved to backend 1's port
    "check-pass", // www-2 passing again
    "remove",     // www-3 removed
];

/// One round of the structural changes (`structural`, `structural-off`),
/// in order. The option toggles are `www`'s, under load; its profile goes
/// round rr → leastconn → +check → +sticky → rr → −check → −sticky (two
/// rounds), every one of them seeded.
pub(crate) const STRUCTURAL_KINDS: [&str; 6] = [
    "service-add",    // a new service `new-<round>` on backend 2
    "service-remove", // that service removed
    "balance",        // www: roundrobin ↔ leastconn
    "healthcheck",    // www: no HTTP check ↔ HAPROXY.BACKEND.HEALTHCHECK=/health
    "sticky",         // www: HAPROXY.BACKEND.STICKY false ↔ true (HTTP cookie)
    "vhost",          // www: a new vhost alt-<round>.example.com (the previous one dropped)
];

/// The health-check path of the health-checked profiles (the demo backend
/// answers it).
pub(crate) const HEALTH_PATH: &str = "/health";

/// The seed services: name, leastconn, health check, sticky: every
/// combination of the three options `www` toggles, so that the full
/// rotation and any part of it (`--structural-kinds`) stay in running
/// profiles; `seed-plain` keeps the default profile in the config while
/// `www` is elsewhere.
pub(crate) const SEEDS: [(&str, bool, bool, bool); 8] = [
    ("seed-plain", false, false, false),
    ("seed-lc", true, false, false),
    ("seed-hc", false, true, false),
    ("seed-sticky", false, false, true),
    ("seed-lc-hc", true, true, false),
    ("seed-lc-sticky", true, false, true),
    ("seed-hc-sticky", false, true, true),
    ("seed-lc-hc-sticky", true, true, true),
];

/// Which round of changes a scenario makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rotation {
    /// [`CHANGE_KINDS`]: servers only.
    Server,
    /// [`STRUCTURAL_KINDS`]: services and backend options.
    Structural,
}

/// The catalog of a change scenario. Each [`Changes::advance`] makes the
/// next change of its rotation, round and round. `www-1` always passes, so
/// some server of `www` always serves.
pub(crate) struct Changes {
    /// The kinds made, in order, round and round: [`CHANGE_KINDS`], or
    /// [`STRUCTURAL_KINDS`] (or the part of them `--structural-kinds`
    /// keeps).
    pub(crate) kinds: Vec<&'static str>,
    pub(crate) backends: [SocketAddr; 3],
    pub(crate) step: usize,
    /// `www-1`'s weight: 1 and 3 in turn.
    pub(crate) weight1: u32,
    /// `www-2`'s check.
    pub(crate) passing2: bool,
    /// `www-3`, when present: on backend 2, or moved to backend 1's port.
    pub(crate) www3: Option<SocketAddr>,
    /// `www`'s backend options (structural rotation).
    pub(crate) leastconn: bool,
    pub(crate) healthcheck: bool,
    pub(crate) sticky: bool,
    /// `www`'s extra vhost `alt-<n>.example.com`, if any.
    pub(crate) alt_vhost: Option<usize>,
    /// The service `new-<n>`, while present.
    pub(crate) new_service: Option<usize>,
}

/// Tags of a service with these options.
fn tags(leastconn: bool, healthcheck: bool, sticky: bool) -> Vec<String> {
    let mut t = vec!["HAPROXY.ENABLE=true".to_string()];
    if leastconn {
        t.push("HAPROXY.BACKEND.BALANCE=leastconn".into());
    }
    if healthcheck {
        t.push(format!("HAPROXY.BACKEND.HEALTHCHECK={HEALTH_PATH}"));
    }
    if sticky {
        t.push("HAPROXY.BACKEND.STICKY=true".into());
    }
    t
}

fn inst(id: &str, a: SocketAddr, weight: u32, passing: bool, tags: &[String]) -> Value {
    json!({"id": id, "address": a.ip().to_string(), "port": a.port(),
           "weight": weight, "passing": passing, "tags": tags})
}

impl Changes {
    /// The rotation's changes; `only`, when not empty, keeps the kinds it
    /// names.
    pub(crate) fn new(backends: [SocketAddr; 3], rotation: Rotation, only: &[String]) -> Changes {
        let all: &[&'static str] = match rotation {
            Rotation::Server => &CHANGE_KINDS,
            Rotation::Structural => &STRUCTURAL_KINDS,
        };
        let kinds = all
            .iter()
            .copied()
            .filter(|k| only.is_empty() || only.iter().any(|o| o == k))
            .collect();
        Changes {
            kinds,
            backends,
            step: 0,
            weight1: 1,
            passing2: true,
            www3: None,
            leastconn: false,
            healthcheck: false,
            sticky: false,
            alt_vhost: None,
            new_service: None,
        }
    }

    /// The catalog every supervisor scenario starts on.
    pub(crate) fn initial(backends: [SocketAddr; 3]) -> Value {
        Changes::new(backends, Rotation::Server, &[]).catalog()
    }

    /// The catalog file's content for the current state.
    pub(crate) fn catalog(&self) -> Value {
        let mut www_tags = tags(self.leastconn, self.healthcheck, self.sticky);
        if let Some(n) = self.alt_vhost {
            www_tags.push(format!("HAPROXY.VHOST=www.example.com,alt-{n}.example.com"));
        }
        let mut instances = vec![
            inst("www-1", self.backends[0], self.weight1, true, &www_tags),
            inst("www-2", self.backends[1], 1, self.passing2, &www_tags),
        ];
        if let Some(a) = self.www3 {
            instances.push(inst("www-3", a, 1, true, &www_tags));
        }
        let mut services = vec![json!({"name": "www", "instances": instances})];
        for (name, lc, hc, st) in SEEDS {
            services.push(json!({"name": name, "instances": [
                inst(&format!("{name}-1"), self.backends[2], 1, true, &tags(lc, hc, st))
            ]}));
        }
        if let Some(n) = self.new_service {
            let name = format!("new-{n}");
            services.push(json!({"name": name, "instances": [
                inst(&format!("{name}-1"), self.backends[2], 1, true, &tags(false, false, false))
            ]}));
        }
        json!({ "services": services })
    }

    /// Makes the next change; returns its kind.
    pub(crate) fn advance(&mut self) -> &'static str {
        let n = self.kinds.len().max(1);
        let kind = self.kinds.get(self.step % n).copied().unwrap_or("none");
        let round = self.step / n;
        match kind {
            "add" => self.www3 = Some(self.backends[2]),
            "weight" => self.weight1 = if self.weight1 == 1 { 3 } else { 1 },
            "check-fail" => self.passing2 = false,
            "move" => self.www3 = Some(self.backends[1]),
            "check-pass" => self.passing2 = true,
            "remove" => self.www3 = None,
            "service-add" => self.new_service = Some(round),
            "service-remove" => self.new_service = None,
            "balance" => self.leastconn = !self.leastconn,
            "healthcheck" => self.healthcheck = !self.healthcheck,
            "sticky" => self.sticky = !self.sticky,
            "vhost" => self.alt_vhost = Some(round),
            _ => {}
        }
        self.step += 1;
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haproxy_supervisor::model::Catalog;

    /// Every profile `www` is in during two rounds of the structural
    /// rotation, or of any part of it, is one a seed has: nothing the
    /// rotation does needs a profile that does not run.
    #[test]
    fn the_structural_rotation_stays_in_seeded_profiles() {
        let b: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let seeded: Vec<(bool, bool, bool)> =
            SEEDS.iter().map(|(_, l, h, s)| (*l, *h, *s)).collect();
        for mask in 0..1u32 << STRUCTURAL_KINDS.len() {
            let only: Vec<String> = STRUCTURAL_KINDS
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, k)| k.to_string())
                .collect();
            let mut c = Changes::new([b, b, b], Rotation::Structural, &only);
            for _ in 0..2 * STRUCTURAL_KINDS.len() {
                c.advance();
                assert!(seeded.contains(&(c.leastconn, c.healthcheck, c.sticky)));
                let catalog = Catalog::parse_file(&c.catalog().to_string()).unwrap();
                assert!(catalog.services.contains_key("www"));
            }
        }
        // Two rounds of the whole rotation bring `www` back to where it
        // started.
        let mut c = Changes::new([b, b, b], Rotation::Structural, &[]);
        for _ in 0..2 * STRUCTURAL_KINDS.len() {
            c.advance();
        }
        assert!(!c.leastconn && !c.healthcheck && !c.sticky);
        assert_eq!(c.new_service, None);
    }
}
