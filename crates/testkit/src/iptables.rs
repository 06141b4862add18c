//! The supervisor's SYN-drop rules (reload strategy `syn-drop`) in the
//! iptables tables of this thread's network namespace.

use std::process::Command;

pub use haproxy_supervisor::haproxy::RULE_COMMENT;

use crate::require;

/// Lines of `iptables -S INPUT` (this thread's network namespace) that are
/// rules of ours.
pub fn our_rules() -> Vec<String> {
    let out = Command::new(require("iptables"))
        .args(["-w", "-S", "INPUT"])
        .output()
        .expect("run iptables -S INPUT");
    assert!(
        out.status.success(),
        "iptables -S INPUT failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(RULE_COMMENT))
        .map(str::to_string)
        .collect()
}

/// Inserts a rule of ours by hand, as a killed run would leave it.
pub fn insert_stale_rule(port: u16) {
    let port = port.to_string();
    let st = Command::new(require("iptables"))
        .args([
            "-w",
            "-I",
            "INPUT",
            "1",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &port,
            "--syn",
            "-m",
            "comment",
            "--comment",
            RULE_COMMENT,
            "-j",
            "DROP",
        ])
        .status()
        .expect("run iptables -I");
    assert!(st.success(), "iptables -I failed");
}
