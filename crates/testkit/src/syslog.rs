//! A syslog sink: HAProxy's access log (`LOCAL_SYSLOG`), received over UDP
//! in the test's network namespace, the lines a test asks to keep kept.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub struct SyslogSink {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyslogSink {
    /// Receives on `addr` (UDP) until dropped, keeping the lines `keep`
    /// accepts (at most 1,000).
    pub fn start(addr: &str, keep: fn(&str) -> bool) -> SyslogSink {
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (lines.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let line = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
                let mut kept = l.lock().unwrap();
                if keep(&line) && kept.len() < 1000 {
                    kept.push(line);
                }
            }
        });
        SyslogSink {
            lines,
            stop,
            thread: Some(thread),
        }
    }

    /// The lines kept so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for SyslogSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
