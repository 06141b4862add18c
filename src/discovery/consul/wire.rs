//! The wire types of Consul's answers (serde) and their conversion to the
//! model: instances, tags, check fingerprints.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use serde::Deserialize;

use crate::model::Instance;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct HealthCheck {
    #[serde(default)]
    node: String,
    #[serde(default, rename = "CheckID")]
    check_id: String,
    #[serde(default)]
    status: String,
    #[serde(default, rename = "ServiceID")]
    service_id: String,
    #[serde(default)]
    service_name: String,
    #[serde(default)]
    modify_index: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceEntry {
    node: EntryNode,
    service: EntryService,
    #[serde(default)]
    checks: Option<Vec<EntryCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryCheck {
    #[serde(default)]
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryNode {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryService {
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: i64,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    weights: Option<Weights>,
    #[serde(default)]
    create_index: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    #[serde(default = "one")]
    passing: i64,
}

fn one() -> i64 {
    1
}

/// One service's instances from its health entries (see
/// [`Client::instances`](super::Client::instances)). An entry repeating another's node, service ID
/// and port is the same instance listed twice (Consul's catalog cannot
/// hold that; a proxy or a broken agent can send it): it is merged, not
/// made a second server on the same address with double the weight. The
/// third value is how many were merged.
pub(super) fn instances_of(entries: Vec<ServiceEntry>) -> (Vec<Instance>, Option<u64>, usize) {
    let created = entries.iter().map(|e| e.service.create_index).min();
    let mut seen = std::collections::HashSet::new();
    let mut merged = 0;
    let instances = entries
        .into_iter()
        .filter(|e| {
            let fresh = seen.insert((e.node.node.clone(), e.service.id.clone(), e.service.port));
            merged += usize::from(!fresh);
            fresh
        })
        .map(|e| Instance {
            passing: e
                .checks
                .as_deref()
                .unwrap_or_default()
                .iter()
                .all(|c| c.status == "passing"),
            id: e.service.id,
            address: if e.service.address.is_empty() {
                e.node.address
            } else {
                e.service.address
            },
            port: e.service.port,
            tags: e.service.tags.unwrap_or_default(),
            weight: e.service.weights.map(|w| w.passing).unwrap_or(1),
        })
        .collect();
    (instances, created, merged)
}

/// Tags per service of `/v1/catalog/services` (`null` tags: none), sorted
/// and deduplicated.
pub(super) fn catalog_tags(
    body: BTreeMap<String, Option<Vec<String>>>,
) -> BTreeMap<String, Vec<String>> {
    body.into_iter()
        .map(|(k, v)| {
            let mut v = v.unwrap_or_default();
            v.sort();
            v.dedup();
            (k, v)
        })
        .collect()
}

/// The body of `/v1/catalog/services` decoded as the watcher decodes it
/// (the same type and `serde_json` call, then [`catalog_tags`]). This and
/// the two below exist for the fuzz targets (tests/fuzz.rs): Consul's
/// answers are input from outside.
pub fn decode_catalog_services(
    body: &[u8],
) -> Result<BTreeMap<String, Vec<String>>, serde_json::Error> {
    serde_json::from_slice(body).map(catalog_tags)
}

/// The body of `/v1/health/state/any` decoded as the watcher decodes it,
/// then reduced to its check fingerprint per service.
pub fn decode_health_state(body: &[u8]) -> Result<HashMap<String, u64>, serde_json::Error> {
    serde_json::from_slice::<Vec<HealthCheck>>(body).map(|c| fingerprints(&c))
}

/// The body of `/v1/health/service/<name>` decoded as the watcher decodes
/// it: the instances (exact duplicates merged), the lowest `CreateIndex`,
/// and how many duplicates were merged.
pub fn decode_health_service(
    body: &[u8],
) -> Result<(Vec<Instance>, Option<u64>, usize), serde_json::Error> {
    serde_json::from_slice::<Vec<ServiceEntry>>(body).map(instances_of)
}

pub(super) fn fingerprints(checks: &[HealthCheck]) -> HashMap<String, u64> {
    let mut groups: HashMap<&str, Vec<&HealthCheck>> = HashMap::new();
    for c in checks.iter().filter(|c| !c.service_name.is_empty()) {
        groups.entry(&c.service_name).or_default().push(c);
    }
    groups
        .into_iter()
        .map(|(name, mut cs)| {
            cs.sort_by(|a, b| {
                (&a.node, &a.service_id, &a.check_id).cmp(&(&b.node, &b.service_id, &b.check_id))
            });
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for c in cs {
                (
                    &c.node,
                    &c.service_id,
                    &c.check_id,
                    &c.status,
                    c.modify_index,
                )
                    .hash(&mut h);
            }
            (name.to_string(), h.finish())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_pass_when_every_check_passes_and_the_oldest_dates_the_service() {
        let entries: Vec<ServiceEntry> = serde_json::from_str(
            r#"[
              {"Node": {"Address": "10.0.0.9"},
               "Service": {"ID": "w1", "Address": "", "Port": 80, "CreateIndex": 30},
               "Checks": [{"Status": "passing"}, {"Status": "passing"}]},
              {"Node": {"Address": "10.0.0.9"},
               "Service": {"ID": "w2", "Address": "10.0.0.2", "Port": 80, "CreateIndex": 12,
                           "Weights": {"Passing": 3, "Warning": 1}},
               "Checks": [{"Status": "passing"}, {"Status": "critical"}]},
              {"Node": {"Address": "10.0.0.9"},
               "Service": {"ID": "w3", "Address": "10.0.0.3", "Port": 80, "CreateIndex": 40},
               "Checks": [{"Status": "warning"}]},
              {"Node": {"Address": "10.0.0.9"},
               "Service": {"ID": "w4", "Address": "10.0.0.4", "Port": 80, "CreateIndex": 41},
               "Checks": null}
            ]"#,
        )
        .unwrap();
        let (inst, created, merged) = instances_of(entries);
        assert_eq!(created, Some(12));
        assert_eq!(merged, 0);
        let passing: Vec<(&str, &str, bool)> = inst
            .iter()
            .map(|i| (i.id.as_str(), i.address.as_str(), i.passing))
            .collect();
        assert_eq!(
            passing,
            [
                ("w1", "10.0.0.9", true),
                ("w2", "10.0.0.2", false),
                ("w3", "10.0.0.3", false),
                ("w4", "10.0.0.4", true)
            ]
        );
        assert_eq!(inst[1].weight, 3);
        assert_eq!(instances_of(Vec::new()).1, None);
    }

    #[test]
    fn an_instance_listed_twice_is_one_server() {
        let entry = |node: &str, id: &str, port: u16| {
            serde_json::json!({"Node": {"Node": node, "Address": "10.0.0.9"},
              "Service": {"ID": id, "Port": port}, "Checks": []})
        };
        let entries: Vec<ServiceEntry> = serde_json::from_value(serde_json::json!([
            entry("n1", "w1", 80),
            entry("n1", "w1", 80),
            entry("n1", "w1", 80),
            // Another node, another port, another ID: other instances.
            entry("n2", "w1", 80),
            entry("n1", "w1", 81),
            entry("n1", "w2", 80),
        ]))
        .unwrap();
        let (inst, _, merged) = instances_of(entries);
        assert_eq!(merged, 2);
        assert_eq!(inst.len(), 4);
    }
}
