//! Length-prefixed frames: `u32` big-endian payload length, then the payload.
//!
//! Used on the control socket and on each agent's channel. The length is checked
//! against [`MAX_FRAME_LEN`] *before* anything is allocated, so a peer that lies
//! about the size (or sends garbage that happens to look like a huge length) costs
//! four bytes of reading and a clear error, never a large allocation. An error
//! on one connection is that connection's problem only: callers close it and go on.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io;

/// Hard maximum payload size of one frame (1 MiB).
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Bytes of the length header.
pub const HEADER_LEN: usize = 4;

/// What went wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame ({got} of {expected} bytes received)")]
    Truncated { expected: usize, got: usize },
    #[error("malformed message: {0}")]
    Decode(#[source] postcard::Error),
    #[error("could not encode message: {0}")]
    Encode(#[source] postcard::Error),
    #[error("socket I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// Serializes `msg` into one complete frame (header + payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    let mut out = postcard::to_extend(msg, std::mem::take(&mut out)).map_err(FrameError::Encode)?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Deserializes one payload (without its header).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(payload).map_err(FrameError::Decode)
}

/// Checks whether `buf` starts with a complete frame, without parsing it.
///
/// Returns `Ok(Some(total))` with the frame's total length (header included) when
/// it is all there, `Ok(None)` when more bytes are needed, and an error as soon as
/// the header announces more than [`MAX_FRAME_LEN`].
pub fn check(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = payload_len(buf[..HEADER_LEN].try_into().expect("4 bytes"))?;
    let total = HEADER_LEN + len;
    Ok((buf.len() >= total).then_some(total))
}

fn payload_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Reads exactly `buf.len()` bytes; returns how many arrived before EOF.
fn read_full_sync<R: io::Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Blocking read of one frame's payload. `Ok(None)` on a clean EOF between frames.
pub fn read_frame_sync<R: io::Read>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full_sync(r, &mut header)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        got => {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN,
                got,
            });
        }
    }
    let len = payload_len(header)?;
    let mut payload = vec![0u8; len];
    let got = read_full_sync(r, &mut payload)?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(Some(payload))
}

/// Blocking write of one message as a frame.
pub fn write_message_sync<W: io::Write, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

#[cfg(feature = "tokio")]
mod async_io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match r.read(&mut buf[got..]).await? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    }

    /// Reads one frame's payload. `Ok(None)` on a clean EOF between frames.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        r: &mut R,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        match read_full(r, &mut header).await? {
            0 => return Ok(None),
            HEADER_LEN => {}
            got => {
                return Err(FrameError::Truncated {
                    expected: HEADER_LEN,
                    got,
                });
            }
        }
        let len = payload_len(header)?;
        let mut payload = vec![0u8; len];
        let got = read_full(r, &mut payload).await?;
        if got < len {
            return Err(FrameError::Truncated { expected: len, got });
        }
        Ok(Some(payload))
    }

    /// Reads and decodes one message. `Ok(None)` on a clean EOF between frames.
    pub async fn read_message<R: AsyncRead + Unpin, T: DeserializeOwned>(
        r: &mut R,
    ) -> Result<Option<T>, FrameError> {
        match read_frame(r).await? {
            Some(p) => decode(&p).map(Some),
            None => Ok(None),
        }
    }

    /// Encodes and writes one message as a frame.
    pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
        w: &mut W,
        msg: &T,
    ) -> Result<(), FrameError> {
        let frame = encode(msg)?;
        w.write_all(&frame).await?;
        w.flush().await?;
        Ok(())
    }
}

#[cfg(feature = "tokio")]
pub use async_io::{read_frame, read_message, write_message};

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        n: u32,
        s: String,
    }

    #[test]
    fn roundtrip_and_back_to_back() {
        let a = encode(&Msg {
            n: 1,
            s: "a".into(),
        })
        .unwrap();
        let b = encode(&Msg {
            n: 2,
            s: "bb".into(),
        })
        .unwrap();
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        let mut cur = io::Cursor::new(stream.clone());
        let m1: Msg = decode(&read_frame_sync(&mut cur).unwrap().unwrap()).unwrap();
        let m2: Msg = decode(&read_frame_sync(&mut cur).unwrap().unwrap()).unwrap();
        assert_eq!(
            m1,
            Msg {
                n: 1,
                s: "a".into()
            }
        );
        assert_eq!(
            m2,
            Msg {
                n: 2,
                s: "bb".into()
            }
        );
        assert!(read_frame_sync(&mut cur).unwrap().is_none());
        // check() sees the frame boundaries without parsing.
        assert_eq!(check(&stream).unwrap(), Some(a.len()));
        assert_eq!(check(&stream[..a.len() - 1]).unwrap(), None);
        assert_eq!(check(&stream[..2]).unwrap(), None);
    }

    #[test]
    fn huge_payload_is_refused_on_both_sides() {
        let big = Msg {
            n: 0,
            s: "x".repeat(MAX_FRAME_LEN + 1),
        };
        assert!(matches!(encode(&big), Err(FrameError::TooLarge { .. })));
        // Exactly at the limit is fine.
        let payload = vec![7u8; MAX_FRAME_LEN];
        let mut frame = (MAX_FRAME_LEN as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let got = read_frame_sync(&mut io::Cursor::new(frame))
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), MAX_FRAME_LEN);
    }

    #[test]
    fn lying_length_header() {
        // Claims 4 GiB: refused from the header alone, nothing allocated.
        let err = read_frame_sync(&mut io::Cursor::new(u32::MAX.to_be_bytes().to_vec()));
        assert!(matches!(err, Err(FrameError::TooLarge { len, .. }) if len == u32::MAX as usize));
        assert!(matches!(
            check(&u32::MAX.to_be_bytes()),
            Err(FrameError::TooLarge { .. })
        ));
        // Claims 100 bytes, sends 10 then closes.
        let mut frame = 100u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[1; 10]);
        let err = read_frame_sync(&mut io::Cursor::new(frame));
        assert!(matches!(
            err,
            Err(FrameError::Truncated {
                expected: 100,
                got: 10
            })
        ));
        // Half a header.
        let err = read_frame_sync(&mut io::Cursor::new(vec![0, 0]));
        assert!(matches!(
            err,
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        let p = read_frame_sync(&mut io::Cursor::new(frame))
            .unwrap()
            .unwrap();
        assert!(matches!(decode::<Msg>(&p), Err(FrameError::Decode(_))));
    }

    #[tokio::test]
    async fn async_roundtrip_over_a_socket() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            for n in 0..100u32 {
                write_message(
                    &mut a,
                    &Msg {
                        n,
                        s: "x".repeat(n as usize * 100),
                    },
                )
                .await
                .unwrap();
            }
        });
        for n in 0..100u32 {
            let m: Msg = read_message(&mut b).await.unwrap().unwrap();
            assert_eq!(m.n, n);
            assert_eq!(m.s.len(), n as usize * 100);
        }
        writer.await.unwrap();
        assert!(read_message::<_, Msg>(&mut b).await.unwrap().is_none());
    }
}
