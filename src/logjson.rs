//! HAProxy's output as JSON lines (`HAPROXY_LOG_FORMAT=json`).
//!
//! With JSON logs the supervisor reads a generation's stdout and stderr
//! instead of letting it write to ours, and passes every line on as one
//! JSON object, so a log shipper reads a single format:
//!
//! - an access log line (the template's `log-format`, already a JSON
//!   object) gets `timestamp` and `level` in front and is otherwise kept;
//! - any other line (HAProxy's events on stdout, `Server web/web-1 is DOWN`,
//!   its alerts and warnings on stderr) becomes
//!   `{"timestamp","level","source":"haproxy","stream","message"}`, plus
//!   `pid` for stderr lines and, for the events a user queries, `event`
//!   with the names it is about (`backend`, `server`, `state`, `proxy`).
//!
//! Nothing a line contains can make the result invalid JSON: a line that
//! does not parse as an object is carried as the `message` string.

use std::time::SystemTime;

/// Which of HAProxy's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The `log stdout format priority` target: `<PRI>` and the message.
    Stdout,
    /// Alerts, warnings, notices: `[LEVEL]  (pid) : message`.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line of HAProxy's output as one line of JSON (no newline).
pub fn to_json(line: &str, stream: Stream, now: SystemTime) -> String {
    let line = line.trim_end_matches(['\r', '\n']);
    let (level, pid, rest) = match stream {
        Stream::Stdout => {
            let (severity, rest) = syslog_priority(line);
            (severity.map(severity_level), None, rest)
        }
        Stream::Stderr => stderr_prefix(line),
    };
    let timestamp = rfc3339(now);
    let level = level.unwrap_or("INFO");
    if rest.starts_with('{') {
        // Checked to be one object, without building it.
        if let Ok(keys) = serde_json::from_str::<Keys>(rest) {
            return with_header(rest, &keys, &timestamp, level);
        }
    }
    let mut out = Object::default();
    out.field("timestamp", &timestamp);
    out.field("level", level);
    out.field("source", "haproxy");
    out.field("stream", stream.name());
    if let Some(pid) = pid {
        out.raw("pid", &pid.to_string());
    }
    for (k, v) in event_fields(rest) {
        out.field(k, &v);
    }
    out.field("message", rest);
    out.finish()
}

/// A JSON object written field by field, in order.
#[derive(Default)]
struct Object(String);

impl Object {
    fn key(&mut self, key: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        string(&mut self.0, key);
        self.0.push(':');
    }
    fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.0.push_str(json);
    }
    fn field(&mut self, key: &str, value: &str) {
        self.key(key);
        string(&mut self.0, value);
    }
    fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

/// Of a JSON object, whether it has the fields the supervisor adds (its
/// other fields are skipped; anything but an object does not parse).
#[derive(serde::Deserialize)]
struct Keys {
    timestamp: Option<serde::de::IgnoredAny>,
    level: Option<serde::de::IgnoredAny>,
}

/// `timestamp` and `level` in front of the object `text` (already checked
/// to be one), which is otherwise kept as HAProxy wrote it. A field it has
/// already is not added.
fn with_header(text: &str, keys: &Keys, timestamp: &str, level: &str) -> String {
    let mut out = Object::default();
    if keys.timestamp.is_none() {
        out.field("timestamp", timestamp);
    }
    if keys.level.is_none() {
        out.field("level", level);
    }
    if out.0.is_empty() {
        return text.to_string();
    }
    let inner = text[1..].trim_start();
    if inner.starts_with('}') {
        return out.finish();
    }
    out.0.push(',');
    out.0.push_str(inner);
    out.0
}

/// Appends `s` as a JSON string.
fn string(out: &mut String, s: &str) {
    // A str always serializes.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// `<134>message` → (Some(6), "message"): the severity of a syslog
/// priority prefix.
fn syslog_priority(line: &str) -> (Option<u8>, &str) {
    if let Some(after) = line.strip_prefix('<') {
        if let Some(end) = after.find('>') {
            if end > 0 && end <= 3 {
                if let Ok(pri) = after[..end].parse::<u16>() {
                    return (Some((pri % 8) as u8), &after[end + 1..]);
                }
            }
        }
    }
    (None, line)
}

/// Syslog severity → the level names the supervisor's own lines use.
fn severity_level(severity: u8) -> &'static str {
    match severity {
        0..=3 => "ERROR",
        4 => "WARN",
        5 | 6 => "INFO",
        _ => "DEBUG",
    }
}

/// `[WARNING]  (123) : text` → (level, pid, text).
fn stderr_prefix(line: &str) -> (Option<&'static str>, Option<u32>, &str) {
    let Some(after) = line.strip_prefix('[') else {
        return (None, None, line);
    };
    let Some(end) = after.find(']') else {
        return (None, None, line);
    };
    let level = match &after[..end] {
        "EMERG" | "ALERT" => "ERROR",
        "WARNING" => "WARN",
        "NOTICE" => "INFO",
        "DIAG" | "DEBUG" => "DEBUG",
        _ => return (None, None, line),
    };
    let mut rest = after[end + 1..].trim_start();
    let mut pid = None;
    if let Some(p) = rest.strip_prefix('(') {
        if let Some(close) = p.find(')') {
            pid = p[..close].parse().ok();
            rest = p[close + 1..].trim_start();
        }
    }
    let rest = rest.strip_prefix(':').map_or(rest, str::trim_start);
    (Some(level), pid, rest)
}

/// The structured fields of the HAProxy events a user queries.
fn event_fields(message: &str) -> Vec<(&'static str, String)> {
    let word = |s: &str| {
        s.split_whitespace()
            .next()
            .unwrap_or("")
            .trim_matches(['\'', '.', '!', ','])
            .to_string()
    };
    if let Some(rest) = message.strip_prefix("Server ") {
        let Some((name, after)) = rest.split_once(' ') else {
            return Vec::new();
        };
        let Some((backend, server)) = name.split_once('/') else {
            return Vec::new();
        };
        let mut fields = vec![
            ("event", "server_state".to_string()),
            ("backend", backend.to_string()),
            ("server", server.to_string()),
        ];
        // `Server b/s ('fqdn') is UP/READY (resolves again)`.
        let after = match after.strip_prefix("('") {
            Some(a) => a.split_once("') ").map_or(a, |(_, r)| r),
            None => after,
        };
        let state = match after.strip_prefix("is ") {
            Some(s) if s.starts_with("going DOWN for maintenance") => Some("MAINT"),
            Some(s) if s.starts_with("DOWN") => Some("DOWN"),
            Some(s) if s.starts_with("UP") => Some("UP"),
            Some(s) if s.starts_with("stopping") => Some("DRAIN"),
            _ => None,
        };
        if let Some(state) = state {
            fields.push(("state", state.to_string()));
        }
        return fields;
    }
    if let Some(rest) = message.strip_prefix("backend ") {
        if rest.contains("has no server available") {
            return vec![
                ("event", "backend_down".to_string()),
                ("backend", word(rest)),
            ];
        }
    }
    if let Some(rest) = message.strip_prefix("Proxy ") {
        let proxy = word(rest);
        let after = rest.split_once(' ').map_or("", |(_, a)| a);
        if after.starts_with("started") {
            return vec![("event", "proxy_started".to_string()), ("proxy", proxy)];
        }
        if after.starts_with("stopped") {
            return vec![("event", "proxy_stopped".to_string()), ("proxy", proxy)];
        }
    }
    if let Some(rest) = message.strip_prefix("Stopping ") {
        // `Stopping frontend app_http_in in 0 ms.`
        if let Some((_, name)) = rest.split_once(' ') {
            return vec![
                ("event", "proxy_stopping".to_string()),
                ("proxy", word(name)),
            ];
        }
    }
    Vec::new()
}

/// `2026-12-02T12:25:33.123456Z`, as the supervisor's own JSON lines.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, sod) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};
    use std::time::Duration;

    fn at() -> SystemTime {
        // 2026-12-02T12:25:33.123456Z
        SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_214_333_123_456)
    }

    fn parse(s: &str) -> Map<String, Value> {
        match serde_json::from_str(s) {
            Ok(Value::Object(o)) => o,
            other => panic!("not a JSON object: {s}: {other:?}"),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(at()), "2026-12-02T12:25:33.123456Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        // A leap day.
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_164_800);
        assert_eq!(rfc3339(leap), "2024-02-29T00:00:00.000000Z");
    }

    #[test]
    fn an_access_log_line_keeps_its_fields_and_gets_a_timestamp_and_level() {
        let line = r#"<134>{"source":"haproxy","event":"http_request","backend":"web","server":"web-1","status":200}"#;
        let o = parse(&to_json(line, Stream::Stdout, at()));
        assert_eq!(o["timestamp"], "2026-12-02T12:25:33.123456Z");
        assert_eq!(o["level"], "INFO");
        assert_eq!(o["backend"], "web");
        assert_eq!(o["status"], 200);
        let text = to_json(line, Stream::Stdout, at());
        assert!(
            text.starts_with(r#"{"timestamp":"2026-12-02T12:25:33.123456Z","level":"INFO","source":"haproxy","event""#),
            "{text}"
        );
        // An empty object, and one with its own level.
        let o = parse(&to_json("<131>{ }", Stream::Stdout, at()));
        assert_eq!(o.len(), 2);
        assert_eq!(o["level"], "ERROR");
        assert_eq!(
            to_json(r#"{"level":"x","timestamp":"y"}"#, Stream::Stdout, at()),
            r#"{"level":"x","timestamp":"y"}"#
        );
    }

    #[test]
    fn a_server_event_on_stdout_gets_structured_fields() {
        let line = "<129>Server web/web-1 is DOWN, reason: Layer4 connection problem, info: \"Connection refused\", check duration: 0ms. 0 active and 0 backup servers left.";
        let o = parse(&to_json(line, Stream::Stdout, at()));
        assert_eq!(o["level"], "ERROR");
        assert_eq!(o["source"], "haproxy");
        assert_eq!(o["stream"], "stdout");
        assert_eq!(o["event"], "server_state");
        assert_eq!(o["backend"], "web");
        assert_eq!(o["server"], "web-1");
        assert_eq!(o["state"], "DOWN");
        assert_eq!(o["message"], &line[5..]);
    }

    #[test]
    fn stderr_lines_carry_level_and_pid() {
        let o = parse(&to_json(
            "[WARNING]  (17967) : Server b/s1 is going DOWN for maintenance. 0 active left.",
            Stream::Stderr,
            at(),
        ));
        assert_eq!(o["level"], "WARN");
        assert_eq!(o["pid"], 17967);
        assert_eq!(o["state"], "MAINT");
        assert_eq!(
            o["message"],
            "Server b/s1 is going DOWN for maintenance. 0 active left."
        );
        let o = parse(&to_json(
            "[ALERT]    (17967) : backend 'b' has no server available!",
            Stream::Stderr,
            at(),
        ));
        assert_eq!(o["level"], "ERROR");
        assert_eq!(o["event"], "backend_down");
        assert_eq!(o["backend"], "b");
        let o = parse(&to_json(
            "<133>Proxy app_http_in started.",
            Stream::Stdout,
            at(),
        ));
        assert_eq!(o["event"], "proxy_started");
        assert_eq!(o["proxy"], "app_http_in");
        assert_eq!(o["level"], "INFO");
    }

    #[test]
    fn anything_else_becomes_a_message_and_stays_json() {
        for line in [
            "",
            "plain text",
            "{\"broken\": \"json",
            "{\"uri\":\"/a\\\"}",
            "<>",
            "<999999>x",
            "[",
            "[ALERT",
            "\u{1}\u{7f}\"\\",
            "[]",
            "123",
        ] {
            for stream in [Stream::Stdout, Stream::Stderr] {
                let o = parse(&to_json(line, stream, at()));
                assert_eq!(o["source"], "haproxy", "{line:?}");
                assert!(o["message"].is_string(), "{line:?}");
            }
        }
    }

    #[test]
    fn invalid_utf8_does_not_reach_here_but_replacement_chars_are_fine() {
        let o = parse(&to_json("GET /\u{fffd}", Stream::Stdout, at()));
        assert_eq!(o["message"], "GET /\u{fffd}");
    }
}
