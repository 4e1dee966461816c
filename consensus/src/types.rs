//! Protocol data: blocks, the proposals votes sign, votes, certificates and messages, with their
//! byte encodings.

use alloy_primitives::{B256, keccak256};

use crate::codec::{DecodeError, Reader, Writer};

/// A view (round) number. View 0 is genesis, implicitly finalized; voting starts at view 1.
pub type View = u64;
/// A block height: genesis is height 0, each block is its parent's height plus one.
pub type Height = u64;
/// A block digest (keccak-256 over the block's fields, see [`Block::digest`]).
pub type Digest = B256;
/// A validator's position in the configured validator set.
pub type ValidatorIndex = u16;

/// At most this many validators (a certificate carries at most one signature per validator).
pub const VALIDATORS_MAX: usize = 1024;
/// The largest payload (mini-block bytes) a proposal may carry. A mini-block is cut every few
/// milliseconds, so 4 MiB is far above any real one; it bounds what a hostile leader can make
/// every replica hold per view.
pub const PAYLOAD_BYTES_MAX: usize = 4 << 20;
/// A proposal may skip at most this many views (each skipped view needs a nullification
/// certificate carried with the proposal). This bounds a proposal's size; a longer run of
/// failed views needs catch-up (later work) before a leader can propose again.
pub const NULLIFICATIONS_MAX: usize = 64;

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sig({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A proposed block: an opaque payload (the mini-block bytes) chained to its parent, and the
/// post-state commitment the leader's application computed by executing it.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    view: View,
    parent_view: View,
    height: Height,
    parent: Digest,
    commitment: B256,
    payload: Vec<u8>,
    digest: Digest,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("view", &self.view)
            .field("height", &self.height)
            .field("parent_view", &self.parent_view)
            .field("digest", &short(&self.digest))
            .field("parent", &short(&self.parent))
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

/// First four bytes of a digest in hex, for logs.
pub fn short(d: &Digest) -> String {
    format!("{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

impl Block {
    /// Builds a block and computes its digest.
    pub fn new(
        view: View,
        parent_view: View,
        height: Height,
        parent: Digest,
        commitment: B256,
        payload: Vec<u8>,
    ) -> Self {
        let digest =
            Self::compute_digest(view, parent_view, height, &parent, &commitment, &payload);
        Self {
            view,
            parent_view,
            height,
            parent,
            commitment,
            payload,
            digest,
        }
    }

    /// keccak256("rtchain/block/v1" || view || parent_view || height || parent || commitment ||
    /// keccak256(payload)). Hashing the payload separately lets a header be checked against a
    /// digest without the payload later.
    fn compute_digest(
        view: View,
        parent_view: View,
        height: Height,
        parent: &Digest,
        commitment: &B256,
        payload: &[u8],
    ) -> Digest {
        let mut w = Writer::with_capacity(16 + 24 + 96);
        w.buf.extend_from_slice(b"rtchain/block/v1");
        w.u64(view);
        w.u64(parent_view);
        w.u64(height);
        w.b256(parent);
        w.b256(commitment);
        w.b256(&keccak256(payload));
        keccak256(&w.buf)
    }

    pub fn view(&self) -> View {
        self.view
    }
    pub fn parent_view(&self) -> View {
        self.parent_view
    }
    pub fn height(&self) -> Height {
        self.height
    }
    pub fn parent(&self) -> Digest {
        self.parent
    }
    pub fn commitment(&self) -> B256 {
        self.commitment
    }
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    pub fn digest(&self) -> Digest {
        self.digest
    }
    /// What votes for this block sign.
    pub fn proposal(&self) -> Proposal {
        Proposal {
            view: self.view,
            parent_view: self.parent_view,
            height: self.height,
            digest: self.digest,
        }
    }

    pub(crate) fn encode_into(&self, w: &mut Writer) {
        w.u64(self.view);
        w.u64(self.parent_view);
        w.u64(self.height);
        w.b256(&self.parent);
        w.b256(&self.commitment);
        w.bytes(&self.payload);
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let view = r.u64()?;
        let parent_view = r.u64()?;
        let height = r.u64()?;
        let parent = r.b256()?;
        let commitment = r.b256()?;
        let payload = r.bytes("payload", PAYLOAD_BYTES_MAX)?.to_vec();
        if parent_view >= view || height == 0 {
            return Err(DecodeError::Invalid(
                "block: parent_view >= view or height 0",
            ));
        }
        Ok(Self::new(
            view,
            parent_view,
            height,
            parent,
            commitment,
            payload,
        ))
    }
}

/// The summary of a block that notarize and finalize votes sign. The digest binds the whole
/// block; view, parent view and height ride along so that a certificate alone says where its
/// block sits in the chain (a node can follow finalization without the payload).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Proposal {
    pub view: View,
    pub parent_view: View,
    pub height: Height,
    pub digest: Digest,
}

impl Proposal {
    fn encode_into(&self, w: &mut Writer) {
        w.u64(self.view);
        w.u64(self.parent_view);
        w.u64(self.height);
        w.b256(&self.digest);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let p = Self {
            view: r.u64()?,
            parent_view: r.u64()?,
            height: r.u64()?,
            digest: r.b256()?,
        };
        if p.parent_view >= p.view || p.height == 0 {
            return Err(DecodeError::Invalid(
                "proposal: parent_view >= view or height 0",
            ));
        }
        Ok(p)
    }
}

/// The three votes of Simplex.
///
/// - `Notarize(p)`: "p is the first valid proposal I saw from this view's leader, its parent is
///   certified, and my execution agrees with its commitment". 2f+1 make a notarization.
/// - `Nullify(v)`: "view v timed out for me (or its proposal was invalid)". 2f+1 make a
///   nullification, which lets the next leader skip view v.
/// - `Finalize(p)`: "I saw p notarized and I did not nullify its view". 2f+1 make a
///   finalization: p and its ancestors are final.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Vote {
    Notarize(Proposal),
    Nullify(View),
    Finalize(Proposal),
}

impl Vote {
    pub fn view(&self) -> View {
        match self {
            Vote::Notarize(p) | Vote::Finalize(p) => p.view,
            Vote::Nullify(v) => *v,
        }
    }

    /// Whether an honest key that already signed `earlier` must not sign `self`.
    ///
    /// The Simplex signing rules, per view: at most one notarize (one block); never both
    /// nullify and finalize (this is what makes a finalization exclude a nullification of the
    /// same view, the heart of the safety argument); no notarize after a nullify (a node that
    /// gave up on the view does not vote for its block any more). Nullify after notarize is
    /// allowed: that is how a view whose block did not gather a quorum is abandoned.
    pub fn forbidden_after(&self, earlier: &Vote) -> bool {
        if self.view() != earlier.view() {
            return false;
        }
        match (earlier, self) {
            (Vote::Notarize(a), Vote::Notarize(b)) => a != b,
            (Vote::Finalize(a), Vote::Finalize(b)) => a != b,
            (Vote::Nullify(_), Vote::Finalize(_)) | (Vote::Finalize(_), Vote::Nullify(_)) => true,
            (Vote::Nullify(_), Vote::Notarize(_)) => true,
            (Vote::Notarize(_), Vote::Nullify(_)) => false,
            (Vote::Notarize(a), Vote::Finalize(b)) | (Vote::Finalize(b), Vote::Notarize(a)) => {
                // Finalizing a block of a view where we notarized another one cannot happen
                // with at most f faults (two notarizations in one view), and must not be
                // signed if it does.
                a.digest != b.digest
            }
            (Vote::Nullify(_), Vote::Nullify(_)) => false,
        }
    }

    pub(crate) fn encode_into(&self, w: &mut Writer) {
        match self {
            Vote::Notarize(p) => {
                w.u8(1);
                p.encode_into(w);
            }
            Vote::Nullify(v) => {
                w.u8(2);
                w.u64(*v);
            }
            Vote::Finalize(p) => {
                w.u8(3);
                p.encode_into(w);
            }
        }
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            1 => Ok(Vote::Notarize(Proposal::decode_from(r)?)),
            2 => {
                let v = r.u64()?;
                if v == 0 {
                    return Err(DecodeError::Invalid("nullify of view 0"));
                }
                Ok(Vote::Nullify(v))
            }
            3 => Ok(Vote::Finalize(Proposal::decode_from(r)?)),
            tag => Err(DecodeError::BadTag { what: "vote", tag }),
        }
    }
}

/// A vote with its signer and signature.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SignedVote {
    pub vote: Vote,
    pub signer: ValidatorIndex,
    pub signature: Signature,
}

/// A quorum (at least 2f+1) of signatures on one vote: a notarization, nullification or
/// finalization. Signers are strictly increasing, so each validator counts once.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Certificate {
    pub vote: Vote,
    pub signatures: Vec<(ValidatorIndex, Signature)>,
}

impl Certificate {
    pub fn view(&self) -> View {
        self.vote.view()
    }

    pub(crate) fn encode_into(&self, w: &mut Writer) {
        self.vote.encode_into(w);
        w.u16(self.signatures.len() as u16);
        for (i, s) in &self.signatures {
            w.u16(*i);
            w.array(&s.0);
        }
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let vote = Vote::decode_from(r)?;
        let count = r.count("certificate signatures", VALIDATORS_MAX)?;
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            signatures.push((r.u16()?, Signature(r.array()?)));
        }
        Ok(Self { vote, signatures })
    }
}

/// A leader's proposal: the block, the leader's notarize signature on it (the proposal doubles
/// as the leader's vote), and the certificates that justify its parent: the parent's
/// notarization or finalization (absent only when the parent is genesis) and a nullification
/// for every view skipped between the parent and this view. Carrying them lets a replica that
/// missed those certificates (lost messages, a restart) check the proposal on its own.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Proposed {
    pub block: Block,
    pub signature: Signature,
    pub parent: Option<Certificate>,
    pub nullifications: Vec<Certificate>,
}

/// A consensus message between validators.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Msg {
    /// The leader's block for a view (see [`Proposed`]).
    Propose(Box<Proposed>),
    /// One vote.
    Vote(SignedVote),
    /// A certificate: sent by the node that assembled it, and as a reply to a peer that is
    /// still voting in a view we have left.
    Certificate(Box<Certificate>),
    /// Ask a peer for the block with this digest (we hold a certificate for it, not the body).
    Request(Digest),
    /// A block body, answering a [`Msg::Request`]. Trusted only if its digest was requested.
    Block(Box<Block>),
}

impl Msg {
    /// Encodes the message (tag byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        match self {
            Msg::Propose(p) => {
                w.u8(1);
                p.block.encode_into(&mut w);
                w.array(&p.signature.0);
                match &p.parent {
                    None => w.u8(0),
                    Some(c) => {
                        w.u8(1);
                        c.encode_into(&mut w);
                    }
                }
                w.u16(p.nullifications.len() as u16);
                for c in &p.nullifications {
                    c.encode_into(&mut w);
                }
            }
            Msg::Vote(v) => {
                w.u8(2);
                v.vote.encode_into(&mut w);
                w.u16(v.signer);
                w.array(&v.signature.0);
            }
            Msg::Certificate(c) => {
                w.u8(3);
                c.encode_into(&mut w);
            }
            Msg::Request(d) => {
                w.u8(4);
                w.b256(d);
            }
            Msg::Block(b) => {
                w.u8(5);
                b.encode_into(&mut w);
            }
        }
        w.buf
    }

    /// Decodes a message. Never panics; any malformed input is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let msg = match r.u8()? {
            1 => {
                let block = Block::decode_from(&mut r)?;
                let signature = Signature(r.array()?);
                let parent = match r.u8()? {
                    0 => None,
                    1 => Some(Certificate::decode_from(&mut r)?),
                    tag => {
                        return Err(DecodeError::BadTag {
                            what: "parent certificate",
                            tag,
                        });
                    }
                };
                let count = r.count("nullifications", NULLIFICATIONS_MAX)?;
                let mut nullifications = Vec::with_capacity(count);
                for _ in 0..count {
                    nullifications.push(Certificate::decode_from(&mut r)?);
                }
                Msg::Propose(Box::new(Proposed {
                    block,
                    signature,
                    parent,
                    nullifications,
                }))
            }
            2 => {
                let vote = Vote::decode_from(&mut r)?;
                Msg::Vote(SignedVote {
                    vote,
                    signer: r.u16()?,
                    signature: Signature(r.array()?),
                })
            }
            3 => Msg::Certificate(Box::new(Certificate::decode_from(&mut r)?)),
            4 => Msg::Request(r.b256()?),
            5 => Msg::Block(Box::new(Block::decode_from(&mut r)?)),
            tag => {
                return Err(DecodeError::BadTag {
                    what: "message",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

/// What the vote log stores: our own votes (so a restart never signs a conflicting one) and the
/// certificates that moved us forward (so a restart can still hand peers the proof they need
/// to leave a view we already left).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Record {
    Vote(Vote),
    Certificate(Certificate),
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        match self {
            Record::Vote(v) => {
                w.u8(1);
                v.encode_into(&mut w);
            }
            Record::Certificate(c) => {
                w.u8(2);
                c.encode_into(&mut w);
            }
        }
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let rec = match r.u8()? {
            1 => Record::Vote(Vote::decode_from(&mut r)?),
            2 => Record::Certificate(Certificate::decode_from(&mut r)?),
            tag => {
                return Err(DecodeError::BadTag {
                    what: "record",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_block() -> Block {
        Block::new(
            7,
            5,
            3,
            B256::repeat_byte(1),
            B256::repeat_byte(2),
            vec![9; 100],
        )
    }

    #[test]
    fn messages_round_trip() {
        let b = sample_block();
        let cert = Certificate {
            vote: Vote::Nullify(6),
            signatures: vec![(0, Signature([1; 64])), (2, Signature([2; 64]))],
        };
        let msgs = vec![
            Msg::Propose(Box::new(Proposed {
                block: b.clone(),
                signature: Signature([3; 64]),
                parent: Some(Certificate {
                    vote: Vote::Notarize(b.proposal()),
                    signatures: vec![],
                }),
                nullifications: vec![cert.clone()],
            })),
            Msg::Vote(SignedVote {
                vote: Vote::Finalize(b.proposal()),
                signer: 3,
                signature: Signature([4; 64]),
            }),
            Msg::Certificate(Box::new(cert)),
            Msg::Request(b.digest()),
            Msg::Block(Box::new(b)),
        ];
        for m in msgs {
            assert_eq!(Msg::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn every_truncation_and_byte_flip_decodes_without_panic() {
        let m = Msg::Propose(Box::new(Proposed {
            block: sample_block(),
            signature: Signature([3; 64]),
            parent: None,
            nullifications: vec![],
        }));
        let bytes = m.encode();
        for len in 0..bytes.len() {
            assert!(Msg::decode(&bytes[..len]).is_err());
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = Msg::decode(&b);
        }
        // A hostile length prefix is refused before allocating.
        let mut b = bytes.clone();
        b[1 + 24 + 64..1 + 24 + 64 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Msg::decode(&b), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn signing_rules() {
        let p = sample_block().proposal();
        let q = Proposal {
            digest: B256::repeat_byte(9),
            ..p
        };
        assert!(Vote::Notarize(q).forbidden_after(&Vote::Notarize(p)));
        assert!(!Vote::Notarize(p).forbidden_after(&Vote::Notarize(p)));
        assert!(Vote::Notarize(p).forbidden_after(&Vote::Nullify(7)));
        assert!(!Vote::Nullify(7).forbidden_after(&Vote::Notarize(p)));
        assert!(Vote::Finalize(p).forbidden_after(&Vote::Nullify(7)));
        assert!(Vote::Nullify(7).forbidden_after(&Vote::Finalize(p)));
        assert!(!Vote::Nullify(8).forbidden_after(&Vote::Finalize(p)));
        assert!(Vote::Finalize(q).forbidden_after(&Vote::Notarize(p)));
    }
}
