//! What the distributed tests run on: a `nats-server -js` of their own on a free loopback
//! port in a temporary directory, and worker hosts that are this very test binary started
//! again with `FORKPIPE_HOST` (its `main` begins with `forkpipe::init()`, which then serves
//! stages and never returns). Both are killed and reaped on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True if `nats-server` is on `PATH`.
pub fn have_nats_server() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The port of the first `scheme` URL in a server's ports file
/// (`{"nats":["nats://127.0.0.1:40757"],"monitoring":["http://127.0.0.1:43083"]}`).
fn port_in(ports: &str, scheme: &str) -> Option<u16> {
    let url = &ports[ports.find(scheme)? + scheme.len()..];
    let url = &url[..url.find('"')?];
    url.rsplit_once(':')?.1.parse().ok()
}

/// A `nats-server -js` of one test.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub http: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server on ports it picks itself (`-1`) and reads them from its ports file:
    /// numbers picked here and handed over could be taken meanwhile by the other tests'
    /// servers or connections, and a test would then talk to another test's server.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("a temp dir");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-m", "-1"])
            .arg("-sd")
            .arg(dir.path())
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let ports = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let mut s = Server {
            child: Some(child),
            port: 0,
            http: 0,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&ports).unwrap_or_default();
            if let (Some(port), Some(http)) = (port_in(&text, "nats://"), port_in(&text, "http://"))
            {
                (s.port, s.http) = (port, http);
                break;
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        while TcpStream::connect(("127.0.0.1", s.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's JetStream report (`/jsz?streams=true`), for what streams exist.
    pub fn jsz(&self) -> String {
        // (A loaded machine can refuse or cut a request: asked again, up to 5 s.)
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.jsz_once();
            if out.starts_with("HTTP/1.")
                && out.contains(" 200 ")
                && out.contains("\r\n\r\n{")
                && out.trim_end().ends_with('}')
            {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "the server's /jsz answered: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn jsz_once(&self) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.http)) else {
            return String::new();
        };
        let _ = s.write_all(b"GET /jsz?streams=true HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A worker host: this test binary in host mode.
pub struct Host {
    child: Option<Child>,
    pub name: String,
}

impl Host {
    /// Starts host `name` on `url` and waits until it serves.
    pub fn start(url: &str, name: &str) -> Host {
        Host::start_with(url, name, &[])
    }

    /// [`Host::start`] with more environment variables.
    pub fn start_with(url: &str, name: &str, env: &[(&str, &str)]) -> Host {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .envs(env.iter().copied())
            .env("FORKPIPE_HOST", url)
            .env("FORKPIPE_HOST_NAME", name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a host");
        let stdout = child.stdout.take().expect("its stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert!(
            line.contains("serving"),
            "host {name} did not start: {line:?}"
        );
        Host {
            child: Some(child),
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on our own, not yet reaped, child.
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
    }

    /// SIGKILLs the host and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` hosts `h1`…`hn` on `url`.
pub fn hosts(url: &str, n: usize) -> Vec<Host> {
    (1..=n)
        .map(|i| Host::start(url, &format!("h{i}")))
        .collect()
}

/// `(pid, ppid)` of every process.
fn all() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// Every descendant of `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let all = all();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &all {
            if pp == p {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Waits (up to `secs`) until `pid` has at most `n` descendants; the count at the end.
pub fn settle(pid: u32, n: usize, secs: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let d = descendants(pid).len();
        if d <= n || Instant::now() > deadline {
            return d;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The processes below this test process besides its fork server (and its hosts' and
/// servers' own, which the caller lists in `keep`).
pub fn stray_descendants(keep: &[u32]) -> Vec<u32> {
    let me = std::process::id();
    let server = forkpipe::fork_server_pid();
    let all = all();
    all.iter()
        .filter(|&&(p, pp)| pp == me && Some(p) != server && !keep.contains(&p))
        .map(|&(p, _)| p)
        .collect()
}

/// Runs `body` on a thread; panics if it takes longer than `secs` (a hang).
pub fn with_deadline<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        let _ = tx.send(());
        r
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Ok(Ok(v)) => v,
            Ok(Err(p)) | Err(p) => std::panic::resume_unwind(p),
        },
        Err(_) => panic!("still running after {secs} s: a hang"),
    }
}
