//! How the ranks of a torchrun launch meet: rank 0 serves a few bytes (NCCL's unique id) over
//! TCP at `MASTER_ADDR:MASTER_PORT`, and every other rank fetches them, retrying until rank 0
//! listens. Under torchrun itself that port already holds torchrun's own store (its workers
//! see `TORCHELASTIC_USE_AGENT_STORE=True`), so there the id is served one port above.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use candle_core::Result;

use crate::launch_env::TorchrunEnv;

/// Bytes that open every answer, so that a rank that reached some other service says so.
const MAGIC: &[u8; 8] = b"ZOO-RDV1";

/// How long ranks wait for each other at the rendezvous (`ZOO_RENDEZVOUS_TIMEOUT` seconds
/// overrides it).
pub fn timeout() -> Duration {
    std::env::var("ZOO_RENDEZVOUS_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs)
}

/// The port the id is served at: `MASTER_PORT`, or the one above it under torchrun's agent
/// store.
pub fn id_port(env: &TorchrunEnv, agent_store: bool) -> Result<u16> {
    if !agent_store {
        return Ok(env.master_port);
    }
    env.master_port.checked_add(1).ok_or_else(|| {
        candle_core::Error::msg(
            "MASTER_PORT=65535 holds torchrun's store, and the port above it does not exist",
        )
    })
}

/// Rank 0: serves `payload` to `peers` connections on `port` (all interfaces), then returns.
pub fn serve(port: u16, payload: &[u8], peers: usize, timeout: Duration) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        candle_core::Error::msg(format!(
            "rendezvous: rank 0 cannot listen on port {port}: {e} (is another run using \
             MASTER_PORT={port}?)"
        ))
    })?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut served = 0;
    while served < peers {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_write_timeout(Some(Duration::from_secs(10)))?;
                let mut message = MAGIC.to_vec();
                message.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                message.extend_from_slice(payload);
                // A peer that went away before reading does not count.
                if stream.write_all(&message).is_ok() {
                    served += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    candle_core::bail!(
                        "rendezvous: rank 0 waited {timeout:?} on port {port} and {served} of \
                         {peers} other ranks came (are they started, with the same \
                         MASTER_ADDR and MASTER_PORT?)"
                    )
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => candle_core::bail!("rendezvous: accepting on port {port}: {e}"),
        }
    }
    Ok(())
}

/// Any other rank: the payload rank 0 serves at `addr:port`, retrying until `timeout`.
pub fn fetch(addr: &str, port: u16, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no attempt");
    while Instant::now() < deadline {
        let addrs = match (addr, port).to_socket_addrs() {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => candle_core::bail!("rendezvous: MASTER_ADDR={addr:?} does not resolve: {e}"),
        };
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(stream) => return read_payload(stream, addr, port),
                Err(e) => last_error = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    candle_core::bail!(
        "rendezvous: rank 0 did not answer at {addr}:{port} within {timeout:?} ({last_error})"
    )
}

fn read_payload(mut stream: TcpStream, addr: &str, port: u16) -> Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| {
        candle_core::Error::msg(format!("rendezvous: reading from {addr}:{port}: {e}"))
    })?;
    if &head[..8] != MAGIC {
        candle_core::bail!(
            "rendezvous: {addr}:{port} is not a zoo rank 0 (it answered {:?}); is the port \
             torchrun's own store? (torchrun's workers have TORCHELASTIC_USE_AGENT_STORE=True)",
            String::from_utf8_lossy(&head)
        )
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).map_err(|e| {
        candle_core::Error::msg(format!("rendezvous: reading from {addr}:{port}: {e}"))
    })?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn rank_zero_serves_every_peer_the_same_bytes() {
        let port = free_port();
        let payload: Vec<u8> = (0..128).map(|i| (i * 7) as u8).collect();
        let expected = payload.clone();
        // The peers start first and retry until rank 0 listens.
        let peers: Vec<_> = (0..3)
            .map(|_| std::thread::spawn(move || fetch("127.0.0.1", port, Duration::from_secs(20))))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        serve(port, &payload, 3, Duration::from_secs(20)).unwrap();
        for p in peers {
            assert_eq!(p.join().unwrap().unwrap(), expected);
        }
    }

    #[test]
    fn missing_peers_a_silent_rank_zero_and_a_foreign_service_are_errors() {
        let port = free_port();
        let e = serve(port, b"id", 1, Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 of 1 other ranks came"), "{e}");
        let e = fetch("127.0.0.1", free_port(), Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not answer"), "{e}");
        // Something else on the port (torchrun's store, say).
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let other = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n").unwrap();
        });
        let e = fetch("127.0.0.1", port, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a zoo rank 0"), "{e}");
        other.join().unwrap();
        let env = TorchrunEnv {
            rank: 0,
            world_size: 2,
            local_rank: 0,
            master_addr: "h".into(),
            master_port: 29500,
        };
        assert_eq!(id_port(&env, false).unwrap(), 29500);
        assert_eq!(id_port(&env, true).unwrap(), 29501);
    }
}
