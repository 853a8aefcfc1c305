//! How the host reaches the agent: a Unix socket the agent listens on (tests, the agent
//! run on the host), or the engine's hybrid-vsock Unix socket, where a `CONNECT <port>`
//! line opens a stream to a guest port.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The agent's own Unix socket (`vireo-agent run --transport unix:PATH`).
    Unix(PathBuf),
    /// The engine's vsock socket; `port` is the agent's vsock port in the guest.
    HybridVsock { path: PathBuf, port: u32 },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::HybridVsock { path, port } => {
                write!(f, "{} (vsock port {port})", path.display())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {endpoint}")]
    Io {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("the engine refused CONNECT {port}: answered {answer:?}")]
    Refused { port: u32, answer: String },
}

/// Longest line the engine may answer `CONNECT` with (`OK <u32>\n` is 14 bytes).
const MAX_HANDSHAKE_LINE: usize = 64;

/// Opens a stream to the agent; the hybrid handshake, if any, is done when this returns.
pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<UnixStream, ConnectError> {
    let io_err = |source| ConnectError::Io {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Unix(path) => UnixStream::connect(path).map_err(io_err),
        Endpoint::HybridVsock { path, port } => {
            let mut stream = UnixStream::connect(path).map_err(io_err)?;
            stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .map_err(io_err)?;
            // Byte by byte: the agent's first frame may follow the line at once, and it
            // must stay in the socket for the protocol reader.
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while line.len() < MAX_HANDSHAKE_LINE {
                match stream.read(&mut byte) {
                    Ok(0) => break,
                    Ok(_) if byte[0] == b'\n' => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        let ok = text
                            .strip_prefix("OK ")
                            .is_some_and(|n| n.trim().parse::<u32>().is_ok());
                        if ok {
                            stream.set_read_timeout(None).map_err(io_err)?;
                            return Ok(stream);
                        }
                        return Err(ConnectError::Refused {
                            port: *port,
                            answer: text,
                        });
                    }
                    Ok(_) => line.push(byte[0]),
                    Err(e) => return Err(io_err(e)),
                }
            }
            Err(ConnectError::Refused {
                port: *port,
                answer: String::from_utf8_lossy(&line).into_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn fake_engine(answer: &'static str) -> (PathBuf, std::thread::JoinHandle<String>) {
        let path = std::env::temp_dir().join(format!(
            "vireo-hv-{}-{}.sock",
            std::process::id(),
            answer.len()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            (&stream).write_all(answer.as_bytes()).unwrap();
            line
        });
        (path, handle)
    }

    #[test]
    fn hybrid_handshake_ok_and_refused() {
        let (path, engine) = fake_engine("OK 1073741824\nXYZ");
        let endpoint = Endpoint::HybridVsock {
            path: path.clone(),
            port: 7000,
        };
        let mut stream = connect(&endpoint, Duration::from_secs(2)).unwrap();
        assert_eq!(engine.join().unwrap(), "CONNECT 7000\n");
        // What follows the line is left for the protocol.
        let mut rest = [0u8; 3];
        stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"XYZ");
        std::fs::remove_file(&path).unwrap();

        let (path, engine) = fake_engine("NO\n");
        let endpoint = Endpoint::HybridVsock {
            path: path.clone(),
            port: 9,
        };
        let err = connect(&endpoint, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, ConnectError::Refused { port: 9, ref answer } if answer == "NO"));
        engine.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
