//! The epmd side: register our name (ALIVE2, kept for as long as the returned stream lives), look a
//! peer's port up (PORT_PLEASE2), and start `epmd -daemon` when none answers, as `erl` does.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use erl_dist::epmd::{EpmdClient, EpmdError, NodeEntry};
use futures::executor::block_on;

use super::blocking::BlockingIo;
use super::error::DistError;

/// epmd's port: `ERL_EPMD_PORT` when set, else 4369.
pub fn epmd_port() -> u16 {
    std::env::var("ERL_EPMD_PORT")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4369)
}

const TIMEOUT: Duration = Duration::from_secs(5);

fn connect(host: &str, port: u16) -> Result<TcpStream, DistError> {
    let addr = format!("{host}:{port}");
    let err = |reason: String| DistError::Epmd {
        addr: addr.clone(),
        reason,
    };
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| err(format!("cannot resolve: {e}")))?;
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let _ = s.set_write_timeout(Some(TIMEOUT));
                return Ok(s);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(err(last))
}

/// Registers `alive` (the part before `@`) as a hidden node listening on `port` with the local
/// epmd, starting `epmd -daemon` if none answers. Returns the registration stream (closing it
/// unregisters the name) and the creation epmd assigned. `eport` is epmd's port.
pub fn register(alive: &str, port: u16, eport: u16) -> Result<(TcpStream, u32), DistError> {
    let stream = match connect("127.0.0.1", eport) {
        Ok(s) => s,
        Err(_) => {
            start_daemon(eport)?;
            connect("127.0.0.1", eport)?
        }
    };
    let entry = NodeEntry::new_hidden(alive, port);
    match block_on(EpmdClient::new(BlockingIo(stream)).register(entry)) {
        Ok((io, creation)) => {
            // The registration lives as long as this connection: no timeouts on it.
            let _ = io.0.set_read_timeout(None);
            Ok((io.0, creation.get()))
        }
        Err(EpmdError::RegisterNodeError { .. }) => Err(DistError::NameInUse(alive.to_string())),
        Err(e) => Err(DistError::Epmd {
            addr: format!("127.0.0.1:{eport}"),
            reason: e.to_string(),
        }),
    }
}

/// Starts `epmd -daemon` (it reads `ERL_EPMD_PORT` itself) and waits, bounded, until it answers.
fn start_daemon(port: u16) -> Result<(), DistError> {
    let status = std::process::Command::new("epmd")
        .arg("-daemon")
        .env("ERL_EPMD_PORT", port.to_string())
        .status()
        .map_err(|e| DistError::Epmd {
            addr: format!("127.0.0.1:{port}"),
            reason: format!("none answers and `epmd -daemon` could not run: {e}"),
        })?;
    if !status.success() {
        return Err(DistError::Epmd {
            addr: format!("127.0.0.1:{port}"),
            reason: format!("none answers and `epmd -daemon` failed: {status}"),
        });
    }
    // epmd -daemon forks and returns before it listens: poll its port until a deadline.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if connect("127.0.0.1", port).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DistError::Epmd {
                addr: format!("127.0.0.1:{port}"),
                reason: "started `epmd -daemon` but it does not answer".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The distribution port of node `alive` on `host` (asking the epmd on port `eport`), or
/// [`DistError::NodeNotRunning`].
pub fn port_please(alive: &str, host: &str, eport: u16) -> Result<u16, DistError> {
    let full = format!("{alive}@{host}");
    let stream = connect(host, eport).map_err(|e| DistError::Unreachable {
        node: full.clone(),
        reason: e.to_string(),
    })?;
    match block_on(EpmdClient::new(BlockingIo(stream)).get_node(alive)) {
        Ok(Some(entry)) => Ok(entry.port),
        Ok(None) => Err(DistError::NodeNotRunning(full)),
        Err(e) => Err(DistError::Unreachable {
            node: full,
            reason: format!("epmd: {e}"),
        }),
    }
}
