//! Transaction gossip: every transaction a validator accepts goes to every other validator, so
//! that whoever leads next can include it. Gossiped transactions are checked like any
//! submission (decoded, senders recovered, nonces against our state) and nobody waits for them
//! on the receiving side.

use alloy_primitives::Bytes;
use rtchain_exec::RecoveredTx;

use super::payload::KIND_TXS;
use crate::{outcome::Submission, sequencer::Sequencer, transport::Transport};

/// Transactions and bytes per gossip message.
const GOSSIP_TXS_MAX: u16 = 512;
const GOSSIP_BYTES_MAX: usize = 256 << 10;

/// Transactions accepted here since the last flush.
#[derive(Default)]
pub struct Gossip {
    out: Vec<Bytes>,
}

impl Gossip {
    pub fn push(&mut self, raw: Bytes) {
        self.out.push(raw);
    }

    /// Sends what was accepted since the last call to `peers`.
    pub fn flush(&mut self, transport: &mut Transport, peers: &[u16]) {
        if self.out.is_empty() {
            return;
        }
        let mut msg = vec![KIND_TXS];
        let mut count = 0u16;
        let mut body = Vec::new();
        for raw in std::mem::take(&mut self.out) {
            body.extend_from_slice(&(raw.len() as u32).to_be_bytes());
            body.extend_from_slice(&raw);
            count += 1;
            if count == GOSSIP_TXS_MAX || body.len() > GOSSIP_BYTES_MAX {
                msg.extend_from_slice(&count.to_be_bytes());
                msg.append(&mut body);
                transport.send(peers, &msg);
                msg.truncate(1);
                count = 0;
            }
        }
        if count > 0 {
            msg.extend_from_slice(&count.to_be_bytes());
            msg.append(&mut body);
            transport.send(peers, &msg);
        }
    }
}

/// A gossip message's raw transactions.
fn parse(msg: &[u8]) -> Option<Vec<&[u8]>> {
    let count = u16::from_be_bytes(msg.get(..2)?.try_into().ok()?) as usize;
    let mut rest = &msg[2..];
    let mut out = Vec::with_capacity(count.min(GOSSIP_TXS_MAX as usize));
    for _ in 0..count {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        out.push(rest.get(4..4usize.checked_add(len)?)?);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some(out)
}

/// Transactions another validator accepted: the fresh, valid ones join the pool and the ready
/// queue (bounded by the pool's limit).
pub fn accept(seq: &mut Sequencer, msg: &[u8]) {
    let Some(raws) = parse(msg) else {
        return;
    };
    let chain = seq.chain().clone();
    let limit = chain.sequencer.max_pending_txs;
    let fresh: Vec<&[u8]> = {
        let pool = chain.pool.read();
        if pool.pending_count() >= limit {
            return;
        }
        raws.into_iter()
            .filter(|raw| !pool.contains(&alloy_primitives::keccak256(raw)))
            .collect()
    };
    use rayon::prelude::*;
    let exec = &chain.exec;
    let recovered: Vec<RecoveredTx> = fresh
        .par_iter()
        .filter_map(|raw| rtchain_exec::tx::decode_and_recover(raw, exec).ok())
        .collect();
    let state = chain.latest_state();
    let mut accepted = Vec::new();
    for tx in recovered {
        let nonce = alloy_consensus::Transaction::nonce(&tx.envelope);
        let current = rtchain_exec::StateReader::account(&state, tx.sender)
            .ok()
            .flatten()
            .map_or(0, |a| a.nonce);
        if nonce >= current {
            accepted.push(tx);
        }
    }
    drop(state);
    let mut pool = chain.pool.write();
    for tx in accepted {
        if pool.contains(&tx.hash) {
            continue;
        }
        if pool.pending_count() >= limit {
            break;
        }
        pool.insert(tx.clone());
        seq.push_ready(Submission::unanswered(tx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_messages_parse_exactly_and_refuse_trailing_or_short_bytes() {
        let mut msg = 2u16.to_be_bytes().to_vec();
        for tx in [&b"ab"[..], &b"c"[..]] {
            msg.extend_from_slice(&(tx.len() as u32).to_be_bytes());
            msg.extend_from_slice(tx);
        }
        assert_eq!(parse(&msg), Some(vec![&b"ab"[..], &b"c"[..]]));
        let mut trailing = msg.clone();
        trailing.push(0);
        assert_eq!(parse(&trailing), None);
        assert_eq!(parse(&msg[..msg.len() - 1]), None);
        assert_eq!(parse(&[0xff]), None);
    }
}
