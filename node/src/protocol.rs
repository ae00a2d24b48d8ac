//! weft's wire protocols: names, messages, size limits and the framing codec.
//!
//! Goals: every message is bounded before it is read (a peer's length prefix never
//! decides an allocation beyond the protocol's limit); every decoder returns an error,
//! never panics; protocol ids carry versions and message enums are only appended to.
//!
//! Non-goals: streaming. A chunk request names a few chunks (at most
//! [`MAX_BATCH_CHUNKS`], about [`MAX_BATCH_BYTES`] of them), so request-response with
//! explicit limits carries transfers with bounded memory, and the cost of a request
//! (a stream, its negotiation, a timer) is paid once per batch, not once per 64 KiB.
use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::{self, ProtocolSupport};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::io;
use std::marker::PhantomData;
use weft_crypto::{ChunkId, DeviceId, FolderId};
use weft_store::sync::SharedFolder;

/// Log exchange between a person's devices.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/weft/sync/1");
/// Chunk transfer.
pub const CHUNK_PROTOCOL: StreamProtocol = StreamProtocol::new("/weft/chunk/1");
/// Uploads from a device to a relay's storage.
pub const STORE_PROTOCOL: StreamProtocol = StreamProtocol::new("/weft/store/1");
/// Pairing a new device.
pub const PAIR_PROTOCOL: StreamProtocol = StreamProtocol::new("/weft/pair/1");

/// Largest sync message (a batch of entries is at most 4 MiB, one entry at most 8 MiB).
pub const MAX_SYNC_MESSAGE: usize = 12 << 20;
/// Most chunks one chunk request may name.
pub const MAX_BATCH_CHUNKS: usize = 32;
/// A chunk answer stops adding chunks once it holds this many bytes.
pub const MAX_BATCH_BYTES: usize = 512 << 10;
/// Largest chunk request: [`MAX_BATCH_CHUNKS`] ids plus framing.
pub const MAX_CHUNK_REQUEST: usize = 2048;
/// Largest chunk answer: just under [`MAX_BATCH_BYTES`], one more sealed chunk of the
/// largest size (4 MiB, a file over 4 GiB: `weft_store::chunker::LARGE`), and framing.
pub const MAX_CHUNK_MESSAGE: usize =
    MAX_BATCH_BYTES + weft_store::chunker::MAX_CHUNK + weft_crypto::chunk::CHUNK_OVERHEAD + 4096;
/// Largest pairing message.
pub const MAX_PAIR_MESSAGE: usize = 1 << 20;

/// Requests of `/weft/sync/1`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Introduces the sender: its device certificate (from its person).
    Hello {
        /// The encoded [`weft_crypto::DeviceCertificate`].
        #[serde(with = "serde_bytes")]
        cert: Vec<u8>,
    },
    /// Asks for the entries of `folder` the sender lacks, given its chain tips.
    Pull {
        /// The folder.
        folder: FolderId,
        /// The sender's last sequence number per author.
        have: Vec<(DeviceId, u64)>,
    },
    /// Says the sender has new entries in `folder`.
    Notify {
        /// The folder.
        folder: FolderId,
    },
    /// Asks for `folder`'s membership entries after the first `since` (asked before
    /// each Pull, so entries are judged by the membership they were written under).
    Members {
        /// The folder.
        folder: FolderId,
        /// How many the sender holds.
        since: u64,
    },
    /// Never on the wire: what the codec hands the node for a request it could not
    /// read (over the size limit, or malformed), so the node can log it with the peer
    /// and refuse it.
    #[serde(skip)]
    Malformed(String),
}

/// Responses of `/weft/sync/1`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The answer to Hello.
    Hello {
        /// The responder's device certificate.
        #[serde(with = "serde_bytes")]
        cert: Vec<u8>,
    },
    /// Entries the requester lacks.
    Entries {
        /// Encoded entries, oldest first per author.
        entries: Vec<serde_bytes::ByteBuf>,
        /// Whether more remain (pull again).
        more: bool,
        /// The certificates of these entries' authors: a device that was paired
        /// through another one is known to all by its certificate, which the person
        /// key signed, however it travels.
        certs: Vec<serde_bytes::ByteBuf>,
    },
    /// Acknowledges a Notify.
    Ack,
    /// Answers `Members`: membership entries, oldest first.
    Members {
        /// Encoded membership entries (at most `weft_store::members::MAX_CHAIN_BATCH`).
        entries: Vec<serde_bytes::ByteBuf>,
    },
    /// The request was refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Requests of `/weft/chunk/1`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ChunkRequest {
    /// Chunks' ciphertexts.
    Get {
        /// The chunks, at most [`MAX_BATCH_CHUNKS`].
        ids: Vec<ChunkId>,
    },
    /// Never on the wire: an unreadable request (see [`SyncRequest::Malformed`]).
    #[serde(skip)]
    Malformed(String),
}

/// Responses of `/weft/chunk/1`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ChunkResponse {
    /// Answers to the first of the requested ids, in order: all of them, or fewer
    /// when the answer reached [`MAX_BATCH_BYTES`] (ask again for the rest).
    Chunks(Vec<ChunkAnswer>),
    /// Refused (unknown peer, or a malformed request).
    Refused,
}

/// One chunk of a [`ChunkResponse::Chunks`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ChunkAnswer {
    /// The ciphertext (the requester checks it against the id).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not here.
    Missing,
}

/// Requests of `/weft/pair/1`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PairRequest {
    /// A new device asks to join, proving it holds the pairing code's secret.
    Join {
        /// [`crate::pairing::proof`] over the joiner's own device id.
        proof: [u8; 32],
        /// The joiner's device name.
        name: String,
    },
    /// Never on the wire: an unreadable request (see [`SyncRequest::Malformed`]).
    #[serde(skip)]
    Malformed(String),
}

/// Requests of `/weft/store/1`, from a device to a relay.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreRequest {
    /// Enables the relay for the sender's person: the sender's device certificate.
    Register {
        /// The encoded [`weft_crypto::DeviceCertificate`].
        #[serde(with = "serde_bytes")]
        cert: Vec<u8>,
    },
    /// Per author, the last entry of `folder` the relay stores.
    Tips {
        /// The folder.
        folder: FolderId,
    },
    /// Stores entries of `folder`, all or nothing.
    PutEntries {
        /// The folder.
        folder: FolderId,
        /// Encoded entries, oldest first per author.
        entries: Vec<serde_bytes::ByteBuf>,
        /// Certificates of their authors (devices of the sender's person that never
        /// registered at the relay themselves).
        certs: Vec<serde_bytes::ByteBuf>,
    },
    /// Which of `ids` the relay lacks for `folder`.
    Missing {
        /// The folder.
        folder: FolderId,
        /// At most [`MAX_STORE_IDS`] chunk ids.
        ids: Vec<ChunkId>,
    },
    /// Stores chunks of `folder`, all or nothing.
    PutChunks {
        /// The folder.
        folder: FolderId,
        /// Chunk ids and ciphertexts, at most about [`MAX_BATCH_BYTES`].
        chunks: Vec<(ChunkId, serde_bytes::ByteBuf)>,
    },
    /// Stores the sender's person's envelope of a folder's keys (sealed to the
    /// person's key with [`weft_crypto::wrap`]; the relay cannot open it).
    PutKey {
        /// The folder.
        folder: FolderId,
        /// The envelope.
        #[serde(with = "serde_bytes")]
        envelope: Vec<u8>,
    },
    /// The sender's person's key envelopes (a device recovering with the recovery key).
    Keys,
    /// The chunks of `folder` that its retained versions still need (under the
    /// relay's retention, which `Registered` tells): the relay forgets the others once
    /// they have been unneeded for its retention period.
    Live {
        /// The folder.
        folder: FolderId,
        /// The chunks, at most [`MAX_LIVE_IDS`].
        ids: Vec<ChunkId>,
    },
    /// Stores membership entries of `folder` (its owner's devices; see
    /// `weft_store::members`), oldest first.
    PutMembership {
        /// The folder.
        folder: FolderId,
        /// Encoded membership entries.
        entries: Vec<serde_bytes::ByteBuf>,
    },
    /// The membership entries of `folder` after the first `since`.
    Membership {
        /// The folder.
        folder: FolderId,
        /// How many the sender holds.
        since: u64,
    },
    /// The folders the sender's person is a member of, with their membership chains'
    /// lengths: how a device learns that a folder was shared with its person.
    Shared,
    /// Creates a share link (see `weft_crypto::link`): the relay keeps the sealed
    /// record and serves it, and only the listed chunks of `folder`, over HTTP to
    /// whoever presents the access token whose hash is given.
    CreateLink {
        /// The link's token (random, chosen by the device).
        token: [u8; 16],
        /// The folder whose chunks the link reads.
        folder: FolderId,
        /// The sealed record (at most `weft_crypto::link::MAX_RECORD_LEN`).
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
        /// The chunks the link may read (at most `weft_crypto::link::MAX_LINK_CHUNKS`),
        /// all stored in `folder`.
        chunks: Vec<ChunkId>,
        /// BLAKE3 of the access token.
        access_hash: [u8; 32],
        /// When the link stops working, Unix ms.
        expires_ms: Option<u64>,
        /// How many times the record may be fetched.
        max_downloads: Option<u64>,
    },
    /// Revokes a link the sender's person created.
    RevokeLink {
        /// The link's token.
        token: [u8; 16],
    },
    /// Never on the wire: an unreadable request (see [`SyncRequest::Malformed`]).
    #[serde(skip)]
    Malformed(String),
}

/// Responses of `/weft/store/1`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreResponse {
    /// The device is registered.
    Registered {
        /// How long the relay keeps versions that are superseded or deleted.
        retention_days: u32,
    },
    /// Answers `Tips`.
    Tips {
        /// Per author, the last stored sequence number.
        tips: Vec<(DeviceId, u64)>,
    },
    /// Answers `PutEntries` and `PutChunks`: how many were new.
    Stored {
        /// New items.
        count: u64,
    },
    /// Answers `Missing`.
    Missing {
        /// The ids the relay lacks.
        ids: Vec<ChunkId>,
        /// Bytes the sender's person may still store (`None`: no quota), so a device
        /// can see that an upload will not fit before sending any of it.
        room: Option<u64>,
    },
    /// Answers `PutKey`.
    KeyStored,
    /// Answers `Keys`: per folder, the envelope.
    Keys {
        /// The envelopes.
        keys: Vec<(FolderId, serde_bytes::ByteBuf)>,
    },
    /// Answers `Membership`.
    Membership {
        /// Encoded membership entries, oldest first.
        entries: Vec<serde_bytes::ByteBuf>,
    },
    /// Answers `Shared`.
    Shared {
        /// Per folder, the length of its membership chain (0: never shared).
        folders: Vec<(FolderId, u64)>,
    },
    /// Refused, with the reason (over quota, not allowed, a bad entry...).
    Refused {
        /// Why.
        reason: String,
    },
    /// Answers `CreateLink`.
    LinkCreated {
        /// The relay's public HTTP base URL (`https://relay.example`), to which
        /// `/s/<token>` is appended.
        base_url: String,
    },
    /// Answers `RevokeLink`.
    LinkRevoked,
}

/// Most chunk ids one `Live` report may carry (it fits in [`MAX_STORE_MESSAGE`]).
pub const MAX_LIVE_IDS: usize = 350_000;
/// Most chunk ids one `Missing` request may carry.
pub const MAX_STORE_IDS: usize = 4096;
/// Most chunks one `PutChunks` request may carry (a relay refuses more); a batch of
/// uploads also stops at about [`MAX_BATCH_BYTES`].
pub const MAX_PUT_CHUNKS: usize = 64;
/// Largest `/weft/store/1` message: a batch of entries (≤ 4 MiB, one entry ≤ 8 MiB)
/// or of chunks, plus framing (the same bound holds for answers: a person's key
/// envelopes, tips, missing ids).
pub const MAX_STORE_MESSAGE: usize = 12 << 20;

/// A message of one of the protocols, and how it goes on the wire. By default a
/// postcard frame ([`write_frame`], [`read_frame`]); a chunk answer, nearly all of
/// the bytes a transfer moves, is written and read piece by piece in the same layout,
/// so its chunks are neither copied into one frame buffer on the way out nor out of
/// one on the way in.
pub trait WireMessage: Serialize + DeserializeOwned + Send + Sync + Sized + 'static {
    /// Writes `self` as one frame of at most `max` bytes, then closes the stream.
    fn write_to<W: AsyncWrite + Unpin + Send>(
        &self,
        io: &mut W,
        max: usize,
    ) -> impl Future<Output = io::Result<()>> + Send {
        write_frame(io, self, max)
    }

    /// Reads one frame of at most `max` bytes.
    fn read_from<R: AsyncRead + Unpin + Send>(
        io: &mut R,
        max: usize,
    ) -> impl Future<Output = io::Result<Self>> + Send {
        read_frame(io, max)
    }
}

impl WireMessage for SyncRequest {}
impl WireMessage for SyncResponse {}
impl WireMessage for ChunkRequest {}
impl WireMessage for StoreRequest {}
impl WireMessage for StoreResponse {}
impl WireMessage for PairRequest {}
impl WireMessage for PairResponse {}

impl WireMessage for ChunkResponse {
    async fn write_to<W: AsyncWrite + Unpin + Send>(
        &self,
        io: &mut W,
        max: usize,
    ) -> io::Result<()> {
        let ChunkResponse::Chunks(answers) = self else {
            return write_frame(io, self, max).await;
        };
        // Exactly postcard's layout of `self`, so any postcard decoder reads it:
        // variant, count, then per answer its variant and (for data) length and bytes.
        let bad = |e: postcard::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let len = encoded_len(self, max)?;
        let mut head = Vec::with_capacity(64);
        head.extend_from_slice(&(len as u32).to_be_bytes());
        head = postcard::to_extend(&(0u32, answers.len()), head).map_err(bad)?;
        for a in answers {
            match a {
                ChunkAnswer::Data(d) => {
                    head = postcard::to_extend(&(0u32, d.len()), head).map_err(bad)?;
                    io.write_all(&head).await?;
                    head.clear();
                    io.write_all(d).await?;
                }
                ChunkAnswer::Missing => {
                    head = postcard::to_extend(&1u32, head).map_err(bad)?;
                }
            }
        }
        if !head.is_empty() {
            io.write_all(&head).await?;
        }
        io.close().await
    }

    async fn read_from<R: AsyncRead + Unpin + Send>(io: &mut R, max: usize) -> io::Result<Self> {
        let len = frame_len(io, max).await?;
        let mut body = FrameReader { io, left: len };
        let resp = match body.varint().await? {
            0 => {
                // Every answer takes at least a byte, so the count is bounded by the
                // frame's length; the allocation by a small constant.
                let n = body.varint().await?;
                if n > body.left as u64 {
                    return Err(malformed("more answers than bytes"));
                }
                let mut answers = Vec::with_capacity((n as usize).min(MAX_BATCH_CHUNKS));
                for _ in 0..n {
                    answers.push(match body.varint().await? {
                        0 => {
                            let l = body.varint().await?;
                            if l > body.left as u64 {
                                return Err(malformed("a chunk longer than its frame"));
                            }
                            let mut d = vec![0u8; l as usize];
                            body.read_exact(&mut d).await?;
                            ChunkAnswer::Data(d)
                        }
                        1 => ChunkAnswer::Missing,
                        v => return Err(malformed(&format!("unknown answer variant {v}"))),
                    });
                }
                ChunkResponse::Chunks(answers)
            }
            1 => ChunkResponse::Refused,
            v => return Err(malformed(&format!("unknown response variant {v}"))),
        };
        if body.left != 0 {
            return Err(malformed(&format!("{} bytes after the answer", body.left)));
        }
        Ok(resp)
    }
}

fn malformed(reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed message: {reason}"),
    )
}

/// The body of one frame, read in place: never past the frame's length.
struct FrameReader<'a, R> {
    io: &'a mut R,
    left: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<'_, R> {
    async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() > self.left {
            return Err(malformed("the frame ends early"));
        }
        self.io.read_exact(buf).await?;
        self.left -= buf.len();
        Ok(())
    }

    /// A postcard varint (LEB128, at most 10 bytes for 64 bits).
    async fn varint(&mut self) -> io::Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let mut b = [0u8; 1];
            self.read_exact(&mut b).await?;
            v |= u64::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("a varint longer than 10 bytes"))
    }
}

/// Requests that can stand for an unreadable one.
pub trait Unreadable {
    /// The stand-in for a request that could not be read, with the reason.
    fn unreadable(reason: String) -> Self;
}

impl Unreadable for SyncRequest {
    fn unreadable(reason: String) -> Self {
        SyncRequest::Malformed(reason)
    }
}

impl Unreadable for ChunkRequest {
    fn unreadable(reason: String) -> Self {
        ChunkRequest::Malformed(reason)
    }
}

impl Unreadable for StoreRequest {
    fn unreadable(reason: String) -> Self {
        StoreRequest::Malformed(reason)
    }
}

impl Unreadable for PairRequest {
    fn unreadable(reason: String) -> Self {
        PairRequest::Malformed(reason)
    }
}

/// Responses of `/weft/pair/1`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PairResponse {
    /// Welcome: the person key, the joiner's certificate, the folders and the devices.
    Welcome {
        /// The person key's seed.
        person_seed: [u8; 32],
        /// The joiner's device certificate.
        cert: Vec<u8>,
        /// The person's folders.
        folders: Vec<SharedFolder>,
        /// Certificates of the person's other devices.
        devices: Vec<Vec<u8>>,
        /// The relays the person's devices back up to.
        relays: Vec<String>,
    },
    /// Refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// How one side uses a protocol: which of its directions it speaks (requests out, in,
/// or both), how many requests may run at once on a connection, and how long one may
/// take. Everything else about a protocol (name, limits) is fixed by the constructors
/// below, so the node, the relay and the tests cannot disagree on it.
#[derive(Clone, Debug)]
pub struct Use {
    /// Directions spoken.
    pub support: ProtocolSupport,
    /// Concurrent requests per connection.
    pub streams: usize,
    /// Per-request timeout.
    pub timeout: std::time::Duration,
}

fn behaviour<Req, Resp>(
    protocol: StreamProtocol,
    max_request: usize,
    max_response: usize,
    u: Use,
) -> request_response::Behaviour<Codec<Req, Resp>>
where
    Req: WireMessage + Unreadable,
    Resp: WireMessage,
{
    request_response::Behaviour::with_codec(
        Codec::new(max_request, max_response),
        [(protocol, u.support)],
        request_response::Config::default()
            .with_request_timeout(u.timeout)
            .with_max_concurrent_streams(u.streams),
    )
}

/// `/weft/sync/1` with its limits.
pub fn sync_behaviour(u: Use) -> request_response::Behaviour<Codec<SyncRequest, SyncResponse>> {
    behaviour(SYNC_PROTOCOL, MAX_SYNC_MESSAGE, MAX_SYNC_MESSAGE, u)
}

/// `/weft/chunk/1` with its limits.
pub fn chunk_behaviour(u: Use) -> request_response::Behaviour<Codec<ChunkRequest, ChunkResponse>> {
    behaviour(CHUNK_PROTOCOL, MAX_CHUNK_REQUEST, MAX_CHUNK_MESSAGE, u)
}

/// `/weft/store/1` with its limits.
pub fn store_behaviour(u: Use) -> request_response::Behaviour<Codec<StoreRequest, StoreResponse>> {
    behaviour(STORE_PROTOCOL, MAX_STORE_MESSAGE, MAX_STORE_MESSAGE, u)
}

/// `/weft/pair/1` with its limits.
pub fn pair_behaviour(u: Use) -> request_response::Behaviour<Codec<PairRequest, PairResponse>> {
    behaviour(PAIR_PROTOCOL, MAX_PAIR_MESSAGE, MAX_PAIR_MESSAGE, u)
}

/// Length-prefixed postcard framing with a maximum size per direction.
pub struct Codec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    _p: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for Codec<Req, Resp> {
    fn clone(&self) -> Self {
        Codec {
            max_request: self.max_request,
            max_response: self.max_response,
            _p: PhantomData,
        }
    }
}

impl<Req, Resp> Codec<Req, Resp> {
    /// A codec refusing requests over `max_request` and responses over `max_response` bytes.
    pub fn new(max_request: usize, max_response: usize) -> Self {
        Codec {
            max_request,
            max_response,
            _p: PhantomData,
        }
    }
}

/// Reads one frame of at most `max` bytes and decodes it.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    io: &mut R,
    max: usize,
) -> io::Result<T> {
    let len = frame_len(io, max).await?;
    let mut buf = FrameBuffer::take(len);
    io.read_exact(buf.bytes()).await?;
    postcard::from_bytes(buf.bytes()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed message: {e}"),
        )
    })
}

/// Frame buffers kept for reuse once a frame is decoded. Zeroing a fresh buffer for
/// every frame of a transfer (chunk answers went through here once; chunk uploads to
/// a relay still do) was a twentieth of a receiving device's CPU; a reused one is
/// zeroed only where it grows. Bounded: [`POOLED_FRAMES`] buffers of at
/// most [`POOLED_FRAME_LEN`] bytes each.
static FRAME_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
const POOLED_FRAMES: usize = 4;
const POOLED_FRAME_LEN: usize = MAX_CHUNK_MESSAGE;

/// A buffer of a frame's length, from [`FRAME_POOL`] when one is there; it goes back
/// to the pool when dropped (also when the read fails half-way).
struct FrameBuffer {
    buf: Vec<u8>,
    len: usize,
}

impl FrameBuffer {
    fn take(len: usize) -> FrameBuffer {
        let mut buf = FRAME_POOL
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        FrameBuffer { buf, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        if self.buf.len() > POOLED_FRAME_LEN {
            return;
        }
        if let Ok(mut p) = FRAME_POOL.lock()
            && p.len() < POOLED_FRAMES
        {
            p.push(std::mem::take(&mut self.buf));
        }
    }
}

/// The length of `msg`'s encoding, worked out without building it (cheap: nothing is
/// copied), so a frame is built at the right size and an oversized message is refused
/// before anything is built or written.
fn encoded_len<T: Serialize + ?Sized>(msg: &T, max: usize) -> io::Result<usize> {
    let len = postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if len > max || u32::try_from(len).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes is over the limit of {max}"),
        ));
    }
    Ok(len)
}

/// Reads a frame's length prefix, refusing one over `max` before anything is read.
async fn frame_len<R: AsyncRead + Unpin>(io: &mut R, max: usize) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {max}"),
        ));
    }
    Ok(len)
}

/// Encodes and writes one frame, refusing to send more than `max` bytes.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    io: &mut W,
    msg: &T,
    max: usize,
) -> io::Result<()> {
    let bad = |e: postcard::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    let len = encoded_len(msg, max)?;
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    let buf = postcard::to_io(msg, buf).map_err(bad)?;
    io.write_all(&buf).await?;
    io.close().await
}

impl<Req, Resp> libp2p::request_response::Codec for Codec<Req, Resp>
where
    Req: WireMessage + Unreadable,
    Resp: WireMessage,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Req> {
        // An unreadable request still reaches the node, as a stand-in carrying the
        // reason, so that it is logged with the peer and answered with a refusal
        // (libp2p would otherwise drop it silently). Its body is not read further.
        match Req::read_from(io, self.max_request).await {
            Ok(r) => Ok(r),
            Err(e) => Ok(Req::unreadable(e.to_string())),
        }
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Resp> {
        Resp::read_from(io, self.max_response).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        req.write_to(io, self.max_request).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()> {
        resp.write_to(io, self.max_response).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use libp2p::futures::io::Cursor;

    fn answer(sizes: &[usize]) -> ChunkResponse {
        ChunkResponse::Chunks(
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| ChunkAnswer::Data(vec![i as u8 + 1; n]))
                .collect(),
        )
    }

    fn sizes(r: &ChunkResponse) -> Vec<(usize, u8)> {
        match r {
            ChunkResponse::Chunks(v) => v
                .iter()
                .map(|a| match a {
                    ChunkAnswer::Data(d) => (d.len(), d[0]),
                    ChunkAnswer::Missing => (0, 0),
                })
                .collect(),
            ChunkResponse::Refused => Vec::new(),
        }
    }

    /// Frames read through reused buffers decode as written: a short frame after a
    /// long one sees none of the long one's bytes, and one over the limit is refused
    /// before its body is read.
    #[tokio::test]
    async fn frames_round_trip_through_reused_buffers() {
        let mut wire = Cursor::new(Vec::new());
        for s in [&[400_000usize, 100_000][..], &[10], &[200_000, 3]] {
            write_frame(&mut wire, &answer(s), MAX_CHUNK_MESSAGE)
                .await
                .unwrap();
        }
        let mut wire = Cursor::new(wire.into_inner());
        for s in [&[400_000usize, 100_000][..], &[10], &[200_000, 3]] {
            let got: ChunkResponse = read_frame(&mut wire, MAX_CHUNK_MESSAGE).await.unwrap();
            let want: Vec<(usize, u8)> = s
                .iter()
                .enumerate()
                .map(|(i, &n)| (n, i as u8 + 1))
                .collect();
            assert_eq!(sizes(&got), want);
        }
        let mut big = Cursor::new(Vec::new());
        write_frame(&mut big, &answer(&[1000]), MAX_CHUNK_MESSAGE)
            .await
            .unwrap();
        let mut big = Cursor::new(big.into_inner());
        let err = read_frame::<ChunkResponse, _>(&mut big, 100)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    /// A chunk answer written piece by piece is byte for byte postcard's frame of it,
    /// so either side may be the older code; and it reads back the same both ways.
    #[tokio::test]
    async fn chunk_answers_keep_the_postcard_layout() {
        // The fullest answer a server builds: chunks up to the batch size, then one of
        // the largest kind (a file over 4 GiB).
        let largest = weft_store::chunker::MAX_CHUNK + weft_crypto::chunk::CHUNK_OVERHEAD;
        let cases = [
            answer(&[400_000, 100_000]),
            answer(&[MAX_BATCH_BYTES - 1, largest]),
            answer(&[]),
            answer(&[1, 127, 128, 16_384]),
            ChunkResponse::Chunks(vec![
                ChunkAnswer::Missing,
                ChunkAnswer::Data(vec![9; 300]),
                ChunkAnswer::Missing,
            ]),
            ChunkResponse::Refused,
        ];
        for r in &cases {
            let mut framed = Cursor::new(Vec::new());
            write_frame(&mut framed, r, MAX_CHUNK_MESSAGE)
                .await
                .unwrap();
            let mut pieces = Cursor::new(Vec::new());
            r.write_to(&mut pieces, MAX_CHUNK_MESSAGE).await.unwrap();
            assert_eq!(pieces.get_ref(), framed.get_ref());
            let mut wire = Cursor::new(pieces.into_inner());
            let got = ChunkResponse::read_from(&mut wire, MAX_CHUNK_MESSAGE)
                .await
                .unwrap();
            assert_eq!(sizes(&got), sizes(r));
            assert_eq!(
                matches!(got, ChunkResponse::Refused),
                matches!(r, ChunkResponse::Refused)
            );
        }
        // Over the limit: refused before anything is written or read.
        let mut out = Cursor::new(Vec::new());
        let err = answer(&[1000]).write_to(&mut out, 100).await.unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        assert!(out.get_ref().is_empty());
    }

    /// Every malformed chunk answer is an error, never a panic or an allocation the
    /// frame's length does not cover.
    #[tokio::test]
    async fn malformed_chunk_answers_are_refused() {
        let framed = |body: &[u8]| {
            let mut v = (body.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(body);
            v
        };
        let mut good = Cursor::new(Vec::new());
        write_frame(&mut good, &answer(&[10, 20]), MAX_CHUNK_MESSAGE)
            .await
            .unwrap();
        let good = good.into_inner();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            // Cut short: the length prefix promises more than the stream holds.
            (good[..good.len() - 1].to_vec(), ""),
            // A chunk longer than the frame.
            (
                framed(&[0, 1, 0, 0xff, 0xff, 0x03, 1, 2]),
                "longer than its frame",
            ),
            // More answers than bytes.
            (framed(&[0, 0xff, 0xff, 0x03]), "more answers than bytes"),
            // Unknown variants.
            (framed(&[2]), "unknown response variant"),
            (framed(&[0, 1, 7]), "unknown answer variant"),
            // Trailing bytes after a complete answer.
            (framed(&[0, 1, 1, 0]), "after the answer"),
            // A varint that never ends.
            (
                framed(&[
                    0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                ]),
                "varint",
            ),
            // A frame over the limit.
            (framed(&vec![0u8; MAX_CHUNK_MESSAGE + 1]), "over the limit"),
        ];
        for (bytes, want) in cases {
            let err = ChunkResponse::read_from(&mut Cursor::new(bytes), MAX_CHUNK_MESSAGE)
                .await
                .unwrap_err();
            assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
        }
    }
}
