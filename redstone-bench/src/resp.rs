//! A minimal Redis (RESP2) client: SET and GET of binary values, pipelined.
//!
//! Just enough to drive `redis-server` through the same harness as
//! Redstone, without a Redis crate in the dependency tree.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use redstone::fast::stream::{write_frames, OutFrame};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One Redis connection.
pub struct Resp {
    stream: TcpStream,
    buf: BytesMut,
}

/// A reply to SET or GET.
pub enum Reply {
    /// `+OK` and other simple strings.
    Simple,
    /// A bulk string (GET's value).
    Bulk(Bytes),
    /// `$-1`: no such key.
    Nil,
}

impl Resp {
    pub async fn connect(addr: &str) -> io::Result<Resp> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        })
    }

    /// Appends `SET key value` to `out`; the value is referenced, not copied.
    pub fn set(out: &mut Vec<Bytes>, key: &str, value: &Bytes) {
        let head = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        );
        out.push(Bytes::from(head));
        out.push(value.clone());
        out.push(Bytes::from_static(b"\r\n"));
    }

    /// Appends `GET key` to `out`.
    pub fn get(out: &mut Vec<Bytes>, key: &str) {
        out.push(Bytes::from(format!(
            "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n",
            key.len()
        )));
    }

    /// Writes the queued commands with vectored writes (Redstone's own
    /// frame writer, which takes any buffers).
    pub async fn send(&mut self, chunks: &mut Vec<Bytes>) -> io::Result<()> {
        let frames = chunks
            .drain(..)
            .map(|head| OutFrame::new(head, Bytes::new()));
        write_frames(&mut self.stream, frames).await
    }

    /// Reads one reply.
    pub async fn read(&mut self) -> io::Result<Reply> {
        let line = self.read_line().await?;
        // `split_at_checked`: an empty line, or one that starts with a
        // multi-byte character, is a bad reply, not a panic.
        let Some((kind, rest)) = line.split_at_checked(1) else {
            return Err(io::Error::other(format!("redis: bad reply line {line:?}")));
        };
        match kind {
            "+" => Ok(Reply::Simple),
            "-" => Err(io::Error::other(format!("redis: {rest}"))),
            "$" => {
                let len: i64 = rest
                    .parse()
                    .map_err(|_| io::Error::other("bad bulk length"))?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                let len = len as usize;
                // Room for the whole value at once, so a large one is read
                // straight into place and handed out without a copy.
                if self.buf.len() < len + 2 {
                    self.buf.reserve(len + 2 - self.buf.len());
                }
                while self.buf.len() < len + 2 {
                    self.fill().await?;
                }
                let data = self.buf.split_to(len).freeze();
                self.buf.advance(2);
                Ok(Reply::Bulk(data))
            }
            _ => Err(io::Error::other(format!("unexpected reply {line:?}"))),
        }
    }

    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.advance(end + 2);
                if line.is_empty() {
                    return Err(io::Error::other("empty reply line"));
                }
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() == self.buf.len() {
            self.buf.reserve(64 * 1024);
        }
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}
