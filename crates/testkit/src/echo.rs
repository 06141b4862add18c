//! A backend for tests that need to see what HAProxy forwarded: every
//! HTTP request is answered `200` with the request line and headers it
//! received as the `text/plain` body (`Connection: close`, one thread per
//! connection). A raw TCP client that sends a request head gets the same.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// What the body holds besides the request head.
#[derive(Debug, Clone, Default)]
pub struct HeadEcho {
    /// Written before the head (a name, to tell backends apart).
    pub prefix: String,
    /// Bytes of padding (`echo echo ...`) after the head, so that
    /// compression has something to do.
    pub pad: usize,
}

impl HeadEcho {
    /// Starts the backend on 127.0.0.1 (in the calling thread's network
    /// namespace) and returns its port. A path with `/sleep/<ms>` in it
    /// is answered after that many milliseconds. It lives as long as the
    /// test's process.
    pub fn start(self) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo backend");
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let me = self.clone();
                std::thread::spawn(move || {
                    let _ = me.answer(stream);
                });
            }
        });
        port
    }

    fn answer(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line.trim().is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let sleep = head
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.split("/sleep/").nth(1))
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse::<u64>().ok());
        if let Some(ms) = sleep {
            // The slow answer is the point: a server timeout to trip.
            std::thread::sleep(Duration::from_millis(ms));
        }
        let pad = "echo ".repeat(self.pad.div_ceil(5));
        let body = format!("{}{head}{pad}", self.prefix);
        let mut out = stream;
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        out.flush()
    }
}
