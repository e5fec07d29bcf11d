//! [`FrameDecoder`]: cuts a byte stream (one QUIC stream) into whole frames, sans-IO.

use crate::wire::{frame_length, WireError, DECODER_RETAINED_BYTES_MAX, FRAME_BYTES_MAX, FRAME_HEADER_BYTES};

/// Accumulates the bytes of a stream and hands out whole frames.
///
/// It holds at most one frame (at most [`FRAME_HEADER_BYTES`] + [`FRAME_BYTES_MAX`] bytes),
/// and grows its buffer only as bytes arrive, never to what a header merely announces. A
/// header announcing more than `FRAME_BYTES_MAX` is refused as soon as its four bytes are in,
/// before any of the body is taken. After an error the stream cannot be re-synchronised: the
/// decoder keeps answering that error and the connection must be closed.
///
/// ```
/// # use reservoir_net::{ClientFrame, FrameDecoder, decode_client_frame};
/// let mut stream = Vec::new();
/// ClientFrame::Goodbye.encode(&mut stream).unwrap();
/// ClientFrame::Goodbye.encode(&mut stream).unwrap();
/// let mut decoder = FrameDecoder::new();
/// let mut input = &stream[..];
/// let mut frames = Vec::new();
/// while !input.is_empty() {
///     let taken = decoder.push(input).unwrap();
///     input = &input[taken..];
///     while let Some(frame) = decoder.pop() {
///         frames.push(decode_client_frame(frame).unwrap());
///     }
/// }
/// assert_eq!(frames, [ClientFrame::Goodbye, ClientFrame::Goodbye]);
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    /// The frame being assembled, header included.
    buffer: Vec<u8>,
    /// The whole frame's size (header included) once its header is in.
    frame_bytes: Option<usize>,
    /// The buffer holds a whole frame that `pop` has not handed out yet.
    ready: bool,
    /// `pop` handed the buffer's frame out; the next `push` starts a new one.
    popped: bool,
    failed: Option<WireError>,
    /// The largest frame body this decoder takes: `FRAME_BYTES_MAX`, or less before a
    /// connection has authenticated ([`FrameDecoder::with_frame_bytes_max`]).
    frame_bytes_max: usize,
}

impl Default for FrameDecoder {
    fn default() -> FrameDecoder {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_frame_bytes_max(FRAME_BYTES_MAX)
    }

    /// A decoder that refuses any frame whose body is over `frame_bytes_max` (at most
    /// `FRAME_BYTES_MAX`) as soon as its header is in. A server reads a connection's `Hello`
    /// with `HELLO_FRAME_BYTES_MAX`: before a peer has authenticated it may not make the
    /// server hold a 2 MiB frame for it.
    pub fn with_frame_bytes_max(frame_bytes_max: usize) -> FrameDecoder {
        assert!((1..=FRAME_BYTES_MAX).contains(&frame_bytes_max), "a frame cap within FRAME_BYTES_MAX");
        FrameDecoder {
            buffer: Vec::new(),
            frame_bytes: None,
            ready: false,
            popped: false,
            failed: None,
            frame_bytes_max,
        }
    }

    /// Raises (or lowers) the cap for the frames after the current one, e.g. once the `Hello`
    /// has authenticated the connection.
    pub fn set_frame_bytes_max(&mut self, frame_bytes_max: usize) {
        assert!((1..=FRAME_BYTES_MAX).contains(&frame_bytes_max), "a frame cap within FRAME_BYTES_MAX");
        self.frame_bytes_max = frame_bytes_max;
    }

    /// Takes bytes from the front of `input` up to the end of the current frame and returns
    /// how many it took (0 while a whole frame waits for [`FrameDecoder::pop`]). Call it
    /// again with the rest, popping in between.
    pub fn push(&mut self, input: &[u8]) -> Result<usize, WireError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.popped {
            self.start_next_frame();
        }
        if self.ready {
            return Ok(0);
        }
        let mut taken = 0;
        if self.frame_bytes.is_none() {
            let wanted = (FRAME_HEADER_BYTES - self.buffer.len()).min(input.len());
            self.buffer.extend_from_slice(&input[..wanted]);
            taken = wanted;
            let Some(header) = self.buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
                return Ok(taken);
            };
            match frame_length(*header) {
                Ok(length) if length > self.frame_bytes_max => {
                    let error = WireError::FrameOverLimit { announced: length as u64, limit: self.frame_bytes_max };
                    self.failed = Some(error.clone());
                    return Err(error);
                }
                Ok(length) => self.frame_bytes = Some(FRAME_HEADER_BYTES + length),
                Err(error) => {
                    self.failed = Some(error.clone());
                    return Err(error);
                }
            }
        }
        let frame_bytes = self.frame_bytes.unwrap_or(FRAME_HEADER_BYTES);
        let wanted = (frame_bytes - self.buffer.len()).min(input.len() - taken);
        self.buffer.extend_from_slice(&input[taken..taken + wanted]);
        taken += wanted;
        self.ready = self.buffer.len() == frame_bytes;
        debug_assert!(self.buffer.len() <= frame_bytes && frame_bytes <= FRAME_HEADER_BYTES + FRAME_BYTES_MAX);
        debug_assert!(taken <= input.len());
        Ok(taken)
    }

    /// The next whole frame (header included), for `decode_client_frame` or
    /// `decode_server_frame`; `None` while the frame is incomplete.
    pub fn pop(&mut self) -> Option<&[u8]> {
        if !self.ready || self.popped {
            return None;
        }
        self.popped = true;
        debug_assert_eq!(Some(self.buffer.len()), self.frame_bytes);
        Some(&self.buffer)
    }

    /// Bytes of a frame received so far (0 between frames).
    pub fn buffered_bytes(&self) -> usize {
        if self.popped {
            0
        } else {
            self.buffer.len()
        }
    }

    fn start_next_frame(&mut self) {
        self.buffer.clear();
        if self.buffer.capacity() > DECODER_RETAINED_BYTES_MAX {
            self.buffer.shrink_to(DECODER_RETAINED_BYTES_MAX);
        }
        self.frame_bytes = None;
        self.ready = false;
        self.popped = false;
    }
}
