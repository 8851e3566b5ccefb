//! A blocking std socket seen as a futures-io stream, so erl_dist's async handshake and epmd client
//! run on the calling thread under `futures::executor::block_on` (every poll completes at once).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A blocking `TcpStream` behind the futures-io traits.
#[derive(Debug)]
pub(crate) struct BlockingIo(pub(crate) TcpStream);

impl futures::io::AsyncRead for BlockingIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.get_mut().0.read(buf))
    }
}

impl futures::io::AsyncWrite for BlockingIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.get_mut().0.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().0.flush())
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().0.shutdown(Shutdown::Write))
    }
}
