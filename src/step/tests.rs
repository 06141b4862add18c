//! Scenarios of the step function, without root, processes or sockets: a
//! [`Sim`] answers every action the way HAProxy, the files and the runtime
//! API would (renders with the real renderer, checks by script), and feeds
//! the answers back, as the loop does.

use super::*;
use crate::model::Instance;
use crate::render::Renderer;
use std::collections::VecDeque;

const MS: Duration = Duration::from_millis(1);

/// A service: its name, its instances (id, port) and its tags.
type Svc<'a> = (&'a str, &'a [(&'a str, u16)], &'a [&'a str]);

fn catalog(services: &[Svc]) -> Arc<Catalog> {
    let mut c = Catalog::default();
    for (i, (name, instances, tags)) in services.iter().enumerate() {
        let mut t: Vec<String> = vec!["HAPROXY.ENABLE=true".into()];
        t.extend(tags.iter().map(|s| s.to_string()));
        if !tags
            .iter()
            .any(|t| t.starts_with("HAPROXY.VHOST") || t.starts_with("HAPROXY.PROTOCOL"))
        {
            t.push(format!("HAPROXY.VHOST={name}.example.com"));
        }
        c.services.insert(
            name.to_string(),
            CatalogService {
                tags: t.clone(),
                instances: instances
                    .iter()
                    .map(|(id, port)| Instance {
                        id: id.to_string(),
                        address: "127.0.0.1".into(),
                        port: *port as i64,
                        tags: t.clone(),
                        weight: 1,
                        passing: true,
                    })
                    .collect(),
                created: i as u64,
            },
        );
    }
    Arc::new(c)
}

fn www(servers: &[(&str, u16)]) -> Arc<Catalog> {
    catalog(&[("www", servers, &[])])
}

fn facts() -> Facts {
    let settings = crate::settings::Settings::from_options(&Default::default()).unwrap();
    Facts {
        strategy: ReloadStrategy::Seamless,
        renders: true,
        discovery: true,
        live_changes: true,
        waits: Waits {
            live: 10 * MS,
            reload_min: 100 * MS,
            reload_max: 1000 * MS,
        },
        stop_timeout: Duration::from_secs(5),
        syn_drop: true,
        fd_limit: None,
        vars: settings.vars,
        caps: live::Caps::from_version("HAProxy version 2.6.12"),
        crt_list: Some("/etc/haproxy/certs.list".into()),
        cert_store: Some("/etc/haproxy/certs".into()),
        certs_dir: Some("/certs".into()),
        run_as_user: false,
        admin_socket: "/run/admin.sock".into(),
        guard_percent: 50,
        guard_grace: Duration::from_secs(30),
    }
}

/// How the simulated HAProxy and files answer.
#[derive(Default)]
struct Script {
    /// `haproxy -c` refuses configs with these backends, blaming them.
    refuse: BTreeSet<String>,
    /// `haproxy -c` refuses everything, blaming nothing.
    refuse_all: bool,
    /// The next starts die at start with this output.
    die_at_start: VecDeque<String>,
    /// Live operations fail from this index on.
    live_fails_at: Option<usize>,
    /// Staging fails (a full disk) this many times.
    disk_full: u32,
    socket_answers: bool,
    held_covers: bool,
    template_broken: bool,
}

struct Sim {
    st: State,
    now: Instant,
    renderer: Renderer,
    script: Script,
    next_pid: i32,
    /// Every action performed, in order.
    done: Vec<Action>,
    /// What the running file holds.
    disk: Option<String>,
}

fn sim_with(f: impl FnOnce(&mut Facts)) -> Sim {
    let mut facts = facts();
    f(&mut facts);
    Sim {
        st: State::new(facts, OnDisk::Nothing, Vec::new()),
        now: Instant::now(),
        renderer: Renderer::new(
            None,
            std::path::Path::new("/etc/haproxy/haproxy.cfg"),
            std::path::Path::new("/run/admin.sock"),
        )
        .unwrap(),
        script: Script {
            socket_answers: true,
            ..Script::default()
        },
        next_pid: 100,
        done: Vec::new(),
        disk: None,
    }
}

fn sim() -> Sim {
    sim_with(|_| {})
}

impl Sim {
    /// Feeds `input` and every answer to what it leads to.
    fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        let mut guard = 0;
        while let Some(i) = queue.pop_front() {
            guard += 1;
            assert!(guard < 1000, "the step does not settle");
            for a in self.st.step(i, self.now) {
                self.done.push(a.clone());
                if let Some(answer) = self.perform(a) {
                    queue.push_back(answer);
                }
            }
        }
    }

    /// Lets `d` pass, feeding every deadline on the way.
    fn wait(&mut self, d: Duration) {
        let end = self.now + d;
        let mut guard = 0;
        while let Some(at) = self.st.next_deadline().filter(|at| *at <= end) {
            guard += 1;
            assert!(guard < 1000, "a deadline does not move on");
            self.now = self.now.max(at);
            self.feed(Input::Tick);
        }
        self.now = end;
    }

    fn perform(&mut self, a: Action) -> Option<Input> {
        match a {
            Action::Render { desired, vars } => Some(Input::Rendered(
                crate::pipeline::render(&self.renderer, &desired, &vars, &Default::default())
                    .map_err(|e| e.to_string()),
            )),
            Action::PrepareExternal { .. } => {
                let text = "global\n".to_string();
                self.disk = Some(text.clone());
                Some(Input::Checked {
                    candidate: Some(Rendered {
                        config: text,
                        maps: BTreeMap::new(),
                    }),
                    result: Ok(()),
                })
            }
            Action::Check { candidate, how, .. } => {
                if how == CheckHow::Staged && self.script.disk_full > 0 {
                    self.script.disk_full -= 1;
                    return Some(Input::Checked {
                        candidate: None,
                        result: Err(CheckError::Transient("no space left".into())),
                    });
                }
                let refused: Vec<&String> = self
                    .script
                    .refuse
                    .iter()
                    .filter(|b| candidate.config().contains(&format!("backend {b} ")))
                    .collect();
                let result = if self.script.refuse_all {
                    Err(CheckError::Invalid(
                        "[ALERT] something global is wrong".into(),
                    ))
                } else if let Some(b) = refused.first() {
                    Err(CheckError::Invalid(format!(
                        "[ALERT] config : backend '{b}' has a bad server"
                    )))
                } else {
                    self.disk = Some(candidate.config().to_string());
                    Ok(())
                };
                Some(Input::Checked {
                    candidate: None,
                    result,
                })
            }
            Action::Probe { .. } => Some(Input::Probed {
                socket_answers: self.script.socket_answers,
                held_covers: self.script.held_covers,
            }),
            Action::Spawn { .. } => {
                self.next_pid += 1;
                Some(Input::Spawned {
                    pid: Pid::from_raw(self.next_pid),
                })
            }
            Action::AwaitListening { id, .. } => match self.script.die_at_start.pop_front() {
                Some(output) => Some(Input::StartFailed {
                    id: Some(id),
                    abandoned: false,
                    died_at_start: true,
                    output: output.clone(),
                    error: format!("died at start: {output}"),
                }),
                None => Some(Input::Listening { id }),
            },
            Action::RollBack { config, .. } => {
                self.disk = Some(config.config().to_string());
                Some(Input::RolledBack { ok: true })
            }
            Action::ApplyLive { ops } => Some(Input::LiveDone(match self.script.live_fails_at {
                Some(i) if i < ops.len() => Err(LiveFailure {
                    applied: i,
                    error: "refused".into(),
                }),
                _ => Ok(()),
            })),
            Action::DeleteParked { servers, backends } => Some(Input::ParkedDone {
                deleted: servers,
                backends,
            }),
            Action::Sync {
                checked,
                epoch,
                wait,
            } => {
                self.disk = Some(checked.rendered.config.clone());
                // A background write answers later; here at once.
                let _ = wait;
                Some(Input::Synced { epoch, ok: true })
            }
            Action::StoreCerts { .. } => Some(Input::CertsStored { ok: true }),
            Action::Reread => Some(Input::Reread {
                template_ok: !self.script.template_broken,
                catalog: None,
            }),
            _ => None,
        }
    }

    fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.done.iter().filter(|a| f(a)).count()
    }

    fn spawns(&self) -> usize {
        self.count(|a| matches!(a, Action::Spawn { .. }))
    }

    fn checks(&self) -> usize {
        self.count(|a| matches!(a, Action::Check { .. }))
    }

    fn strategies(&self) -> Vec<ReloadStrategy> {
        self.done
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { strategy, .. } => Some(*strategy),
                _ => None,
            })
            .collect()
    }

    fn kills(&self, sig: Signal) -> Vec<Pid> {
        self.done
            .iter()
            .filter_map(|a| match a {
                Action::Kill(p, s) if *s == sig => Some(*p),
                _ => None,
            })
            .collect()
    }

    fn exit(&self) -> Option<i32> {
        self.done.iter().find_map(|a| match a {
            Action::Exit(c) => Some(*c),
            _ => None,
        })
    }

    fn serving_pid(&self) -> Pid {
        self.st.gens.serving().expect("a generation serves").pid
    }

    fn serving_id(&self) -> u64 {
        self.st.gens.serving().expect("a generation serves").id
    }

    fn serving_config(&self) -> String {
        self.st
            .applied
            .serving
            .as_ref()
            .unwrap()
            .config()
            .to_string()
    }

    /// Starts with `c` and waits until it serves.
    fn started(c: Arc<Catalog>) -> Sim {
        let mut s = sim();
        s.feed(Input::Catalog(c));
        assert!(s.st.gens.serving().is_some());
        s
    }

    fn crash(&mut self) {
        let (id, pid) = (self.serving_id(), self.serving_pid());
        self.feed(Input::Exited {
            id,
            pid,
            exit: Exit::Signal(9),
        });
    }

    fn cleared(&mut self) {
        self.done.clear();
    }
}

// --- starting -------------------------------------------------------------

#[test]
fn the_first_catalog_starts_at_once_checked_and_in_place() {
    let mut s = sim();
    s.feed(Input::Begin);
    assert!(s.done.is_empty(), "nothing starts before discovery answers");
    assert!(s.st.snapshot().not_ready.unwrap().contains("discovery"));
    s.feed(Input::Catalog(www(&[("web-1", 9001)])));
    assert_eq!((s.checks(), s.spawns()), (1, 1));
    assert!(s.st.snapshot().not_ready.is_none());
    assert_eq!(s.disk.as_deref(), Some(s.serving_config().as_str()));
    assert!(s.serving_config().contains("127.0.0.1:9001"));
    assert!(s
        .done
        .iter()
        .any(|a| matches!(a, Action::WritePids(p) if p.len() == 1)));
    assert_eq!(s.st.counters.reloads, 0, "a start is not a reload");
    assert!(s.st.applied.live.is_some(), "its servers are known live");
}

#[test]
fn an_external_config_starts_without_discovery() {
    let mut s = sim_with(|f| {
        f.renders = false;
        f.discovery = false;
    });
    s.feed(Input::Begin);
    assert!(s
        .done
        .iter()
        .any(|a| matches!(a, Action::PrepareExternal { .. })));
    assert_eq!(s.spawns(), 1);
    assert!(
        s.st.applied.live.is_none(),
        "no live changes for a config we did not render"
    );
}

#[test]
fn a_config_an_earlier_run_wrote_is_checked_in_place_not_staged() {
    let mut first = sim();
    first.feed(Input::Catalog(www(&[("web-1", 9001)])));
    let text = first.disk.clone().unwrap();
    let mut s = sim();
    s.st.applied.on_disk = OnDisk::Earlier(text);
    s.feed(Input::Catalog(www(&[("web-1", 9001)])));
    assert!(s.done.iter().any(|a| matches!(
        a,
        Action::Check {
            how: CheckHow::InPlace,
            ..
        }
    )));
    assert_eq!(s.checks(), 1);
    assert_eq!(s.spawns(), 1);
}

#[test]
fn leftovers_of_an_earlier_run_are_handed_over_and_then_forgotten() {
    let mut s = sim();
    s.st.adopted = vec![Pid::from_raw(42)];
    s.feed(Input::Catalog(www(&[("web-1", 9001)])));
    let old = s.done.iter().find_map(|a| match a {
        Action::AwaitListening { old, .. } => Some(old.clone()),
        _ => None,
    });
    assert_eq!(old, Some(vec![Pid::from_raw(42)]));
    assert!(s.st.adopted.is_empty());
}

// --- catalog changes ---------------------------------------------------------

#[test]
fn a_new_server_goes_live_without_a_process() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.cleared();
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    assert!(s.done.is_empty(), "it waits the live wait");
    s.wait(20 * MS);
    let ops = s.done.iter().find_map(|a| match a {
        Action::ApplyLive { ops } => Some(ops.clone()),
        _ => None,
    });
    assert!(ops.unwrap().iter().any(|o| o.kind() == "add_server"));
    assert_eq!(s.spawns(), 0);
    assert_eq!(s.st.counters.live_changes, 1);
    assert!(
        s.serving_config().contains("127.0.0.1:9002"),
        "what serves includes it"
    );
}

#[test]
fn what_was_applied_live_is_written_to_disk_afterwards() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    s.wait(20 * MS);
    assert_eq!(
        s.count(|a| matches!(a, Action::Sync { wait: false, .. })),
        1
    );
    assert_eq!(s.disk.as_deref(), Some(s.serving_config().as_str()));
    assert_eq!(s.st.applied.unsynced(), None);
}

#[test]
fn a_stale_background_write_does_not_claim_the_disk() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let before = s.st.applied.on_disk.clone();
    s.st.syncing = s.st.applied.serving.clone().map(|mut c| {
        Arc::make_mut(&mut c).rendered.config.push_str("# older\n");
        c
    });
    s.st.sync_in_flight = true;
    let stale = s.st.epoch - 1;
    s.feed(Input::Synced {
        epoch: stale,
        ok: true,
    });
    assert_eq!(s.st.applied.on_disk, before);
    assert!(!s.st.sync_in_flight);
}

#[test]
fn an_unchanged_config_neither_checks_nor_starts() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.cleared();
    s.st.applied.live = None; // not live: the change reloads
    s.feed(Input::Catalog(www(&[("web-1", 9001)])));
    s.wait(200 * MS);
    assert_eq!((s.checks(), s.spawns()), (0, 0));
}

#[test]
fn a_new_service_is_structural_and_waits_the_reload_wait() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.cleared();
    s.feed(Input::Catalog(catalog(&[
        ("www", &[("web-1", 9001)], &[]),
        (
            "api",
            &[("api-1", 9101)],
            &["HAPROXY.VHOST=api.example.com"],
        ),
    ])));
    s.wait(20 * MS);
    assert_eq!(s.spawns(), 0, "structural: it waits the reload wait");
    s.wait(200 * MS);
    assert_eq!(s.spawns(), 1);
    assert_eq!(s.st.counters.reloads, 1);
    assert!(s.serving_config().contains("backend api"));
}

#[test]
fn a_catalog_change_during_a_reload_gives_one_follow_up() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.st.applied.live = None;
    s.cleared();
    // A reload under way: its check has not answered yet.
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    s.now += 150 * MS;
    let actions = s.st.step(Input::Tick, s.now);
    assert!(matches!(actions[..], [Action::Render { .. }]));
    assert!(s.st.busy.is_some());
    // Three changes arrive meanwhile.
    for port in [9003, 9004, 9005] {
        let more = s.st.step(
            Input::Catalog(www(&[("web-1", 9001), ("web-x", port)])),
            s.now,
        );
        assert!(more.is_empty(), "nothing starts while a reload runs");
    }
    assert!(
        s.st.next_deadline().is_none(),
        "no deadline fires during an episode"
    );
    // The episode goes on with the render it asked for.
    let Action::Render { desired, vars } = actions[0].clone() else {
        unreachable!()
    };
    let r = s.perform(Action::Render { desired, vars }).unwrap();
    s.feed(r);
    assert_eq!(s.spawns(), 1);
    s.wait(Duration::from_secs(2));
    let renders = s.count(|a| matches!(a, Action::Render { .. }));
    assert_eq!(renders, 1, "one follow-up for the three changes");
    assert!(s.serving_config().contains(":9005"));
}

#[test]
fn changes_that_never_settle_apply_after_the_longest_wait() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.st.applied.live = None;
    s.cleared();
    for i in 0..30u16 {
        s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9100 + i)])));
        s.wait(50 * MS);
    }
    assert!(s.spawns() >= 1, "reload_max bounds the wait");
}

#[test]
fn a_failed_live_operation_reloads_and_does_not_carry_that_servers_state() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.script.live_fails_at = Some(0);
    s.cleared();
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    s.wait(20 * MS);
    assert_eq!(s.st.counters.live_failures, 1);
    assert_eq!(s.spawns(), 1, "it reloads at once");
    let unconfirmed = s.done.iter().find_map(|a| match a {
        Action::Spawn { unconfirmed, .. } => Some(unconfirmed.clone()),
        _ => None,
    });
    assert!(unconfirmed
        .unwrap()
        .contains(&("www".to_string(), "web-2".to_string())));
    assert!(
        s.st.unconfirmed.is_empty(),
        "cleared once the new one serves"
    );
    assert!(s.st.applied.live.is_some(), "known again after the reload");
}

#[test]
fn a_removed_server_is_parked_then_deleted() {
    let mut s = Sim::started(www(&[("web-1", 9001), ("web-2", 9002)]));
    s.cleared();
    s.feed(Input::Catalog(www(&[("web-1", 9001)])));
    s.wait(20 * MS);
    assert_eq!(s.spawns(), 0);
    assert!(s
        .done
        .iter()
        .any(|a| matches!(a, Action::DeleteParked { servers, .. } if servers.len() == 1)));
    assert!(s.st.applied.live.as_ref().unwrap().parked.is_empty());
}

// --- refusals and failures --------------------------------------------------

#[test]
fn a_refused_service_is_left_out_and_the_rest_applies() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.script.refuse.insert("api".into());
    s.cleared();
    s.feed(Input::Catalog(catalog(&[
        ("www", &[("web-1", 9001), ("web-2", 9002)], &[]),
        (
            "api",
            &[("api-1", 9101)],
            &["HAPROXY.VHOST=api.example.com"],
        ),
    ])));
    s.wait(300 * MS);
    assert_eq!(s.checks(), 2, "refused once, then checked without it");
    assert_eq!(s.spawns(), 1);
    assert!(!s.serving_config().contains("backend api"));
    assert!(
        s.serving_config().contains(":9002"),
        "the other change applies"
    );
    assert!(s.st.excluded.contains_key("api"));
    let left: Vec<_> =
        s.st.snapshot()
            .left_out
            .into_iter()
            .map(|l| l.service)
            .collect();
    assert_eq!(left, ["api"]);
}

#[test]
fn a_refusal_blaming_nothing_that_changed_keeps_what_serves() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let serving = s.serving_config();
    s.script.refuse_all = true;
    s.st.applied.live = None;
    s.cleared();
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    s.wait(300 * MS);
    // The sole change is blamed and left out: the second check fails too.
    assert_eq!((s.checks(), s.spawns()), (2, 0));
    assert_eq!(s.serving_config(), serving);
    assert_eq!(s.st.counters.failed_reloads, 2);
    assert!(s.done.contains(&Action::CheckFailed));
    assert!(
        s.st.retry_at.is_none(),
        "an invalid config waits for a change or SIGHUP"
    );
}

#[test]
fn a_left_out_service_is_tried_again_when_its_time_is_up() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.script.refuse.insert("api".into());
    s.feed(Input::Catalog(catalog(&[
        ("www", &[("web-1", 9001)], &[]),
        (
            "api",
            &[("api-1", 9101)],
            &["HAPROXY.VHOST=api.example.com"],
        ),
    ])));
    s.wait(300 * MS);
    assert!(s.st.excluded.contains_key("api"));
    s.script.refuse.clear();
    s.wait(policy::FIRST_EXCLUSION + Duration::from_secs(1));
    assert!(
        s.serving_config().contains("backend api"),
        "it serves once HAProxy takes it"
    );
}

#[test]
fn a_left_out_service_whose_registration_changes_is_tried_at_once() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.script.refuse.insert("api".into());
    s.feed(Input::Catalog(catalog(&[
        ("www", &[("web-1", 9001)], &[]),
        (
            "api",
            &[("api-1", 9101)],
            &["HAPROXY.VHOST=api.example.com"],
        ),
    ])));
    s.wait(300 * MS);
    s.script.refuse.clear();
    s.feed(Input::Catalog(catalog(&[
        ("www", &[("web-1", 9001)], &[]),
        (
            "api",
            &[("api-1", 9102)],
            &["HAPROXY.VHOST=api.example.com"],
        ),
    ])));
    s.wait(300 * MS);
    assert!(s.serving_config().contains("backend api"));
    assert!(s.st.excluded.is_empty());
}

#[test]
fn a_failed_write_is_retried_with_backoff_until_it_heals() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.script.disk_full = 2;
    s.st.applied.live = None;
    s.cleared();
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    s.wait(200 * MS);
    assert_eq!(s.spawns(), 0);
    assert!(s.st.retry_at.is_some());
    s.wait(Duration::from_secs(10));
    assert_eq!(s.spawns(), 1, "healed: the change applies");
    assert!(s.st.retry_at.is_none());
    assert!(s.serving_config().contains(":9002"));
}

#[test]
fn a_failed_start_rolls_back_blames_and_retries_without_the_service() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let serving = s.serving_config();
    s.script
        .die_at_start
        .push_back("[ALERT] Proxy 'api': cannot bind".into());
    s.cleared();
    s.feed(Input::Catalog(catalog(&[
        ("www", &[("web-1", 9001), ("web-2", 9002)], &[]),
        (
            "api",
            &[("api-1", 9101)],
            &["HAPROXY.FRONTEND.PORT=7000", "HAPROXY.PROTOCOL=tcp"],
        ),
    ])));
    s.wait(300 * MS);
    let rollback = s.done.iter().find_map(|a| match a {
        Action::RollBack { config, .. } => Some(config.config().to_string()),
        _ => None,
    });
    assert_eq!(
        rollback.as_deref(),
        Some(serving.as_str()),
        "the config that served goes back"
    );
    assert!(s.st.excluded.contains_key("api"));
    assert_eq!(s.spawns(), 2, "a second attempt without it");
    assert!(s.st.gens.serving().is_some());
}

#[test]
fn a_failed_start_that_blames_nobody_retries_later_while_the_old_one_serves() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let pid = s.serving_pid();
    s.script.die_at_start.push_back("out of memory".into());
    s.st.applied.live = None;
    s.cleared();
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    s.wait(120 * MS);
    assert_eq!(s.spawns(), 1);
    assert_eq!(s.serving_pid(), pid, "the old generation keeps serving");
    assert!(s.st.retry_at.is_some());
    assert_eq!(
        s.disk.as_deref().map(|d| d.contains(":9002")),
        Some(false),
        "rolled back"
    );
    s.wait(Duration::from_secs(5));
    assert_ne!(s.serving_pid(), pid, "the retry started the change");
}

#[test]
fn a_first_start_that_fails_is_restarted_with_backoff() {
    let mut s = sim();
    s.script.die_at_start.push_back("cannot bind".into());
    s.feed(Input::Catalog(www(&[("web-1", 9001)])));
    assert!(s.st.gens.serving().is_none());
    assert!(
        s.st.restart_at.is_some(),
        "a checked config but nothing serving"
    );
    s.wait(Duration::from_secs(3));
    assert!(s.st.gens.serving().is_some());
    assert_eq!(s.st.counters.restarts, 1);
    assert!(s.done.contains(&Action::Restarted));
}

#[test]
fn one_episode_stops_after_eight_attempts() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.cleared();
    let names: Vec<String> = (0..10).map(|i| format!("svc{i}")).collect();
    let mut services: Vec<Svc> = vec![("www", &[("web-1", 9001)], &[])];
    let insts: Vec<[(&str, u16); 1]> = (0..10).map(|i| [("x-1", 9200 + i as u16)]).collect();
    let ports: Vec<String> = (0..10)
        .map(|i| format!("HAPROXY.FRONTEND.PORT={}", 7000 + i))
        .collect();
    let tags: Vec<[&str; 2]> = ports
        .iter()
        .map(|p| [p.as_str(), "HAPROXY.PROTOCOL=tcp"])
        .collect();
    for i in 0..10 {
        s.script.refuse.insert(names[i].clone());
        services.push((&names[i], &insts[i], &tags[i]));
    }
    s.feed(Input::Catalog(catalog(&services)));
    s.wait(300 * MS);
    assert_eq!(s.checks(), ATTEMPTS as usize);
    assert_eq!(s.spawns(), 0);
}

// --- crashes -----------------------------------------------------------------

#[test]
fn a_crash_restarts_what_served_with_backoff() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let serving = s.serving_config();
    s.cleared();
    s.crash();
    assert!(s.st.gens.serving().is_none());
    let at = s.st.restart_at.expect("a restart is scheduled");
    assert!(at >= s.now);
    s.wait(Duration::from_secs(3));
    assert_eq!(s.spawns(), 1);
    assert_eq!(s.checks(), 0, "the checked config on disk starts as it is");
    assert_eq!(s.serving_config(), serving);
    assert_eq!(s.st.counters.restarts, 1);
    assert_eq!(s.st.counters.reloads, 0);
}

#[test]
fn a_crash_loop_keeps_restarting() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    for _ in 0..5 {
        s.crash();
        s.wait(Duration::from_secs(11));
        assert!(s.st.gens.serving().is_some());
    }
    assert_eq!(s.st.counters.restarts, 5);
}

#[test]
fn a_restart_writes_what_was_applied_live_first() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    // The live change applied; its background write has not run yet.
    s.now += 20 * MS;
    let actions = s.st.step(Input::Tick, s.now);
    for a in actions {
        if !matches!(a, Action::Sync { .. }) {
            if let Some(i) = s.perform(a) {
                s.feed(i);
            }
        }
    }
    s.st.sync_in_flight = false;
    s.st.syncing = None;
    s.cleared();
    s.crash();
    s.wait(Duration::from_secs(3));
    let order: Vec<&str> = s
        .done
        .iter()
        .filter_map(|a| match a {
            Action::Sync { wait: true, .. } => Some("sync"),
            Action::Spawn { .. } => Some("spawn"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["sync", "spawn"]);
    assert!(s.disk.unwrap().contains(":9002"));
}

#[test]
fn a_drained_generation_is_not_restarted() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let (old_id, old_pid) = (s.serving_id(), s.serving_pid());
    s.feed(Input::Signal(Signal::SIGHUP));
    assert_ne!(s.serving_pid(), old_pid);
    s.cleared();
    s.feed(Input::Exited {
        id: old_id,
        pid: old_pid,
        exit: Exit::Code(0),
    });
    assert!(s.st.restart_at.is_none());
    assert!(s
        .done
        .iter()
        .any(|a| matches!(a, Action::WritePids(p) if p.len() == 1)));
}

// --- signals -----------------------------------------------------------------

#[test]
fn sighup_with_an_unchanged_config_starts_it_without_a_second_check() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let pid = s.serving_pid();
    s.cleared();
    s.feed(Input::Signal(Signal::SIGHUP));
    assert!(s.done.contains(&Action::Reread));
    assert_eq!((s.checks(), s.spawns()), (0, 1));
    assert_eq!(
        s.kills(Signal::SIGUSR1),
        Vec::<Pid>::new(),
        "the executor retires the old one"
    );
    let old = s.done.iter().find_map(|a| match a {
        Action::AwaitListening { old, .. } => Some(old.clone()),
        _ => None,
    });
    assert_eq!(old, Some(vec![pid]));
    assert_eq!(s.st.counters.reloads, 1);
}

#[test]
fn sighup_with_a_broken_template_changes_nothing() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.script.template_broken = true;
    s.cleared();
    s.feed(Input::Signal(Signal::SIGHUP));
    assert_eq!((s.checks(), s.spawns()), (0, 0));
    assert_eq!(s.st.counters.failed_reloads, 1);
    assert!(s.st.busy.is_none());
}

#[test]
fn sighup_during_a_reload_rereads_once_after_it() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.cleared();
    let first = s.st.step(Input::Signal(Signal::SIGHUP), s.now);
    assert_eq!(first, [Action::Reread]);
    assert!(s.st.step(Input::Signal(Signal::SIGHUP), s.now).is_empty());
    assert!(s.st.step(Input::Signal(Signal::SIGUSR2), s.now).is_empty());
    s.feed(Input::Reread {
        template_ok: true,
        catalog: None,
    });
    assert_eq!(
        s.count(|a| *a == Action::Reread),
        1,
        "one follow-up for both"
    );
    assert_eq!(s.spawns(), 2);
}

#[test]
fn sighup_discards_a_pending_change_and_applies_it_now() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.st.applied.live = None;
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    assert!(s.st.pending.is_some());
    s.feed(Input::Signal(Signal::SIGHUP));
    assert!(s.st.pending.is_none());
    assert!(s.serving_config().contains(":9002"));
}

#[test]
fn forwarded_and_ignored_signals() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let pid = s.serving_pid();
    s.cleared();
    s.feed(Input::Signal(Signal::SIGUSR1));
    s.feed(Input::Signal(Signal::SIGWINCH));
    assert_eq!(s.done, [Action::Kill(pid, Signal::SIGUSR1)]);
}

#[test]
fn sigterm_soft_stops_every_generation_and_exits_with_the_serving_ones_code() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let (id, pid) = (s.serving_id(), s.serving_pid());
    s.cleared();
    s.feed(Input::Signal(Signal::SIGTERM));
    assert_eq!(s.kills(Signal::SIGUSR1), [pid]);
    assert_eq!(s.exit(), None, "it waits for haproxy");
    s.feed(Input::Exited {
        id,
        pid,
        exit: Exit::Code(3),
    });
    assert_eq!(s.exit(), Some(3));
}

#[test]
fn a_second_sigterm_forces_and_sigkill_follows() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let pid = s.serving_pid();
    s.feed(Input::Signal(Signal::SIGTERM));
    s.cleared();
    s.feed(Input::Signal(Signal::SIGHUP));
    assert!(s.done.is_empty(), "no reload while stopping");
    s.feed(Input::Signal(Signal::SIGINT));
    assert_eq!(s.kills(Signal::SIGTERM), [pid]);
    s.wait(policy::KILL_AFTER + MS);
    assert_eq!(s.kills(Signal::SIGKILL), [pid]);
    assert_eq!(s.exit(), None);
}

#[test]
fn the_stop_timeout_forces() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let pid = s.serving_pid();
    s.feed(Input::Signal(Signal::SIGTERM));
    s.cleared();
    s.wait(Duration::from_secs(4));
    assert!(s.kills(Signal::SIGTERM).is_empty());
    s.wait(Duration::from_secs(2));
    assert_eq!(s.kills(Signal::SIGTERM), [pid]);
}

#[test]
fn sigquit_forces_at_once() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let pid = s.serving_pid();
    s.feed(Input::Signal(Signal::SIGQUIT));
    assert_eq!(s.kills(Signal::SIGTERM), [pid]);
}

#[test]
fn sigterm_during_a_reload_starts_nothing_more_and_stops() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    let (id, pid) = (s.serving_id(), s.serving_pid());
    s.st.applied.live = None;
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    s.now += 150 * MS;
    let render = s.st.step(Input::Tick, s.now);
    assert!(matches!(render[..], [Action::Render { .. }]));
    s.cleared();
    s.feed(Input::Signal(Signal::SIGTERM));
    // The render it asked for answers after the stop began.
    let Action::Render { desired, vars } = render[0].clone() else {
        unreachable!()
    };
    let answer = s.perform(Action::Render { desired, vars }).unwrap();
    s.feed(answer);
    assert_eq!((s.checks(), s.spawns()), (0, 0));
    s.feed(Input::Exited {
        id,
        pid,
        exit: Exit::Code(0),
    });
    assert_eq!(s.exit(), Some(0));
}

#[test]
fn sigterm_with_nothing_running_exits_at_once() {
    let mut s = sim();
    s.feed(Input::Signal(Signal::SIGTERM));
    assert_eq!(s.exit(), Some(0));
}

#[test]
fn stopping_writes_what_was_applied_live() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.feed(Input::Catalog(www(&[("web-1", 9001), ("web-2", 9002)])));
    s.now += 20 * MS;
    let actions = s.st.step(Input::Tick, s.now);
    for a in actions {
        if !matches!(a, Action::Sync { .. }) {
            if let Some(i) = s.perform(a) {
                s.feed(i);
            }
        }
    }
    s.st.sync_in_flight = false;
    s.cleared();
    s.feed(Input::Signal(Signal::SIGTERM));
    assert_eq!(s.count(|a| matches!(a, Action::Sync { wait: true, .. })), 1);
}

// --- certificates --------------------------------------------------------------

fn bundle(name: &str, serial: &str) -> crate::tls::Bundle {
    crate::tls::Bundle {
        name: name.into(),
        pem: format!("-----PEM {serial}-----"),
        subject: format!("CN={name}"),
        serial: serial.into(),
        dns_names: vec![name.into()],
        not_after: "2099-01-01".into(),
        expired: false,
    }
}

fn certs(bundles: &[(&str, &str)]) -> CertSet {
    bundles
        .iter()
        .map(|(n, s)| (n.to_string(), bundle(n, s)))
        .collect()
}

/// Serving, with our crt-list loaded and bundle `a.pem` served.
fn serving_tls() -> Sim {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.st.certs = certs(&[("a.pem", "1")]);
    if let Some(c) = &mut s.st.applied.serving {
        Arc::make_mut(c)
            .rendered
            .config
            .push_str("    bind :8443 ssl crt-list /etc/haproxy/certs.list\n");
    }
    s.cleared();
    s
}

#[test]
fn a_certificate_replaced_live_is_one_more_live_operation() {
    let mut s = serving_tls();
    s.feed(Input::Certs(certs(&[("a.pem", "2")])));
    assert!(
        matches!(s.done[0], Action::StoreCerts { .. }),
        "the store first"
    );
    let ops = s.done.iter().find_map(|a| match a {
        Action::ApplyLive { ops } => Some(ops.clone()),
        _ => None,
    });
    assert_eq!(
        ops,
        Some(vec![Op::SetCert {
            path: "/etc/haproxy/certs/a.pem".into(),
            pem: "-----PEM 2-----".into(),
        }])
    );
    assert_eq!(s.spawns(), 0);
    assert_eq!(s.st.certs, certs(&[("a.pem", "2")]));
}

#[test]
fn a_certificate_added_and_one_removed_go_live_in_the_same_diff() {
    let mut s = serving_tls();
    s.st.certs = certs(&[("a.pem", "1"), ("b.pem", "1")]);
    s.feed(Input::Certs(certs(&[("a.pem", "1"), ("c.pem", "1")])));
    let kinds: Vec<&str> = s
        .done
        .iter()
        .filter_map(|a| match a {
            Action::ApplyLive { ops } => Some(ops.iter().map(Op::kind).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(kinds, ["add_cert", "del_cert"]);
    assert_eq!(s.spawns(), 0);
}

#[test]
fn a_certificate_change_that_needs_a_reload_checks_and_starts() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.cleared();
    // The first bundle: the HTTPS bind appears, by a reload.
    s.feed(Input::Certs(certs(&[("a.pem", "1")])));
    assert!(matches!(s.done[0], Action::StoreCerts { .. }));
    assert_eq!(
        s.checks(),
        1,
        "certificates are checked even when the text is the same"
    );
    assert_eq!(s.spawns(), 1);
    assert_eq!(s.st.counters.reloads, 1);
}

#[test]
fn a_certificate_operation_that_fails_falls_back_to_a_reload() {
    let mut s = serving_tls();
    s.script.live_fails_at = Some(0);
    s.feed(Input::Certs(certs(&[("a.pem", "2")])));
    assert_eq!(s.spawns(), 1);
    assert_eq!(s.st.counters.reloads, 1);
}

#[test]
fn the_same_certificates_change_nothing() {
    let mut s = serving_tls();
    s.feed(Input::Certs(certs(&[("a.pem", "1")])));
    assert!(s.done.is_empty());
}

#[test]
fn a_certificate_change_during_a_reload_follows_it() {
    let mut s = serving_tls();
    let first = s.st.step(Input::Signal(Signal::SIGHUP), s.now);
    assert_eq!(first, [Action::Reread]);
    assert!(s
        .st
        .step(Input::Certs(certs(&[("a.pem", "2")])), s.now)
        .is_empty());
    s.feed(Input::Reread {
        template_ok: true,
        catalog: None,
    });
    assert_eq!(s.count(|a| matches!(a, Action::StoreCerts { .. })), 1);
    assert_eq!(s.st.certs, certs(&[("a.pem", "2")]));
}

// --- strategies ---------------------------------------------------------------

#[test]
fn seamless_falls_back_to_syn_drop_when_the_socket_does_not_answer() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.script.socket_answers = false;
    s.feed(Input::Signal(Signal::SIGHUP));
    assert_eq!(s.strategies().last(), Some(&ReloadStrategy::SynDrop));
    s.script.socket_answers = true;
    s.feed(Input::Signal(Signal::SIGHUP));
    assert_eq!(s.strategies().last(), Some(&ReloadStrategy::Seamless));
}

#[test]
fn held_sockets_start_as_the_user_and_need_no_transfer() {
    let mut s = sim_with(|f| {
        f.strategy = ReloadStrategy::Inherit;
        f.run_as_user = true;
    });
    s.script.held_covers = true;
    s.script.socket_answers = false;
    s.feed(Input::Catalog(www(&[("web-1", 9001)])));
    s.feed(Input::Signal(Signal::SIGHUP));
    assert_eq!(
        s.strategies(),
        [ReloadStrategy::Inherit, ReloadStrategy::Inherit]
    );
    assert!(s.done.iter().all(|a| !matches!(
        a,
        Action::Spawn {
            run_as_user: false,
            ..
        }
    )));
}

// --- guard, limits, status ------------------------------------------------------

#[test]
fn a_mass_removal_is_held_until_sighup() {
    let many: Vec<(String, u16)> = (0..9).map(|i| (format!("web-{i}"), 9001 + i)).collect();
    let refs: Vec<(&str, u16)> = many.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let mut s = Sim::started(catalog(&[
        ("www", &[("www-1", 9000)], &[]),
        ("api", &refs, &[]),
    ]));
    s.feed(Input::Catalog(www(&[("www-1", 9000)])));
    s.wait(300 * MS);
    assert!(s.st.snapshot().removal_held.is_some());
    assert!(
        s.serving_config().contains(":9009"),
        "the held answer is not applied"
    );
    s.feed(Input::Signal(Signal::SIGHUP));
    assert!(s.st.snapshot().removal_held.is_none());
    assert!(!s.serving_config().contains(":9009"));
}

#[test]
fn a_held_removal_applies_when_the_grace_ends() {
    let many: Vec<(String, u16)> = (0..9).map(|i| (format!("web-{i}"), 9001 + i)).collect();
    let refs: Vec<(&str, u16)> = many.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let mut s = Sim::started(catalog(&[
        ("www", &[("www-1", 9000)], &[]),
        ("api", &refs, &[]),
    ]));
    s.feed(Input::Catalog(www(&[("www-1", 9000)])));
    s.wait(300 * MS);
    assert!(s.st.guard_held.is_some());
    s.wait(Duration::from_secs(31));
    assert!(s.st.guard_held.is_none());
    assert!(!s.serving_config().contains(":9009"));
}

#[test]
fn the_global_maxconn_is_fitted_to_the_open_files_limit() {
    let mut s = sim_with(|f| f.fd_limit = Some(4096));
    s.feed(Input::Catalog(www(&[("web-1", 9001)])));
    let fitted = s.done.iter().find_map(|a| match a {
        Action::Render { vars, .. } => Some(vars.maxconn_global),
        _ => None,
    });
    assert_eq!(
        fitted,
        policy::fitted_maxconn(s.st.facts.vars.maxconn_global, Some(1), 4096)
    );
    assert!(fitted.unwrap() < s.st.facts.vars.maxconn_global);
}

#[test]
fn the_status_counts_what_serves() {
    let mut s = Sim::started(www(&[("web-1", 9001), ("web-2", 9002)]));
    s.feed(Input::Signal(Signal::SIGHUP));
    let snap = s.st.snapshot();
    assert_eq!(snap.services_rendered, 1);
    assert_eq!(snap.servers_rendered, 2);
    assert_eq!(snap.reloads, 1);
    assert_eq!(snap.serving_pid, Some(s.serving_pid().as_raw()));
    assert_eq!(snap.draining, 1);
}

#[test]
fn discovery_stopping_keeps_what_serves() {
    let mut s = Sim::started(www(&[("web-1", 9001)]));
    s.cleared();
    s.feed(Input::DiscoveryStopped);
    assert!(s.done.is_empty());
    assert!(!s.st.discovery_open);
    assert!(s.st.gens.serving().is_some());
}
