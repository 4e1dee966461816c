//! Packing bytes into EIP-4844 blobs so that a blob carries as much as it can.
//!
//! A blob is 4,096 field elements of 32 bytes, each a big-endian integer below the BLS12-381
//! scalar modulus (just under 2^255). Keeping the top two bits of every element zero makes any
//! content valid, and leaves 254 usable bits per element: 4 elements carry 127 bytes (31 low
//! bytes each, plus 4 x 6 bits in their top bytes). That is the layout the OP stack uses
//! (ecotone's blob encoding), written here from its description:
//!
//! - per round of 4 elements, 127 input bytes are read as `tailA(31) x tailB(31) y tailC(31) z
//!   tailD(31)`; element `i` holds tail `i` in bytes 1..32 and a 6-bit top byte:
//!   `A = x & 0x3f`, `B = (y & 0x0f) | (x & 0xc0) >> 2`, `C = z & 0x3f`,
//!   `D = (z & 0xc0) >> 2 | (y & 0xf0) >> 4`;
//! - the stream starts with a version byte (0) and the payload length as a 24-bit big-endian
//!   integer; so one blob carries up to 130,044 bytes of payload (99.2% of its 131,072 bytes);
//! - everything after the payload is zero, so a blob decodes to exactly one payload.

use alloy_eips::eip4844::{BYTES_PER_BLOB, Blob};

/// Field elements per blob.
const ELEMENTS: usize = 4096;
/// Bytes a round of 4 field elements carries.
const ROUND_BYTES: usize = 127;
const ROUNDS: usize = ELEMENTS / 4;
/// The version byte and the 24-bit length at the start of the stream.
const HEADER_BYTES: usize = 4;
/// Payload bytes one blob carries at most.
pub const MAX_BLOB_DATA_BYTES: usize = ROUND_BYTES * ROUNDS - HEADER_BYTES;
const ENCODING_VERSION: u8 = 0;

/// Why a blob does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("blob encoding version {0} is not 0")]
    Version(u8),
    #[error("blob payload length {0} exceeds {MAX_BLOB_DATA_BYTES}")]
    Length(usize),
    #[error("field element {0} has one of its top two bits set")]
    FieldElement(usize),
    #[error("blob has non-zero bytes after its payload")]
    TrailingData,
    #[error("payload of {0} bytes does not fit one blob ({MAX_BLOB_DATA_BYTES} at most)")]
    TooLarge(usize),
}

/// Encodes up to [`MAX_BLOB_DATA_BYTES`] into one blob.
pub fn encode(data: &[u8]) -> Result<Blob, BlobError> {
    if data.len() > MAX_BLOB_DATA_BYTES {
        return Err(BlobError::TooLarge(data.len()));
    }
    // The stream the rounds consume: header, payload, then zeros to a whole number of rounds.
    let mut stream = Vec::with_capacity(ROUND_BYTES * ROUNDS);
    stream.push(ENCODING_VERSION);
    stream.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    stream.extend_from_slice(data);
    stream.resize(ROUND_BYTES * ROUNDS, 0);
    let mut blob = Blob::ZERO;
    let out = blob.as_mut_slice();
    for round in 0..ROUNDS {
        let input = &stream[round * ROUND_BYTES..(round + 1) * ROUND_BYTES];
        let element = |i: usize| round * 128 + i * 32;
        let (tail_a, x) = (&input[0..31], input[31]);
        let (tail_b, y) = (&input[32..63], input[63]);
        let (tail_c, z) = (&input[64..95], input[95]);
        let tail_d = &input[96..127];
        let tops = [
            x & 0x3f,
            (y & 0x0f) | ((x & 0xc0) >> 2),
            z & 0x3f,
            ((z & 0xc0) >> 2) | ((y & 0xf0) >> 4),
        ];
        for (i, (top, tail)) in tops
            .iter()
            .zip([tail_a, tail_b, tail_c, tail_d])
            .enumerate()
        {
            let at = element(i);
            out[at] = *top;
            out[at + 1..at + 32].copy_from_slice(tail);
        }
    }
    Ok(blob)
}

/// Encodes `data` into as many blobs as it needs.
pub fn encode_all(data: &[u8]) -> Vec<Blob> {
    data.chunks(MAX_BLOB_DATA_BYTES)
        .map(|chunk| encode(chunk).expect("chunks fit one blob"))
        .collect()
}

/// Blobs `len` bytes of payload need.
pub fn blobs_for(len: usize) -> usize {
    len.div_ceil(MAX_BLOB_DATA_BYTES).max(1)
}

/// Decodes one blob to its payload; refuses anything [`encode`] could not have produced.
pub fn decode(blob: &Blob) -> Result<Vec<u8>, BlobError> {
    let bytes = blob.as_slice();
    debug_assert_eq!(bytes.len(), BYTES_PER_BLOB);
    let mut stream = Vec::with_capacity(ROUND_BYTES * ROUNDS);
    for round in 0..ROUNDS {
        let element = |i: usize| round * 128 + i * 32;
        let mut tops = [0u8; 4];
        for (i, top) in tops.iter_mut().enumerate() {
            *top = bytes[element(i)];
            if *top & 0xc0 != 0 {
                return Err(BlobError::FieldElement(round * 4 + i));
            }
        }
        let [a, b, c, d] = tops;
        let x = a | ((b & 0x30) << 2);
        let y = (b & 0x0f) | ((d & 0x0f) << 4);
        let z = c | ((d & 0x30) << 2);
        stream.extend_from_slice(&bytes[element(0) + 1..element(0) + 32]);
        stream.push(x);
        stream.extend_from_slice(&bytes[element(1) + 1..element(1) + 32]);
        stream.push(y);
        stream.extend_from_slice(&bytes[element(2) + 1..element(2) + 32]);
        stream.push(z);
        stream.extend_from_slice(&bytes[element(3) + 1..element(3) + 32]);
    }
    if stream[0] != ENCODING_VERSION {
        return Err(BlobError::Version(stream[0]));
    }
    let len = u32::from_be_bytes([0, stream[1], stream[2], stream[3]]) as usize;
    if len > MAX_BLOB_DATA_BYTES {
        return Err(BlobError::Length(len));
    }
    let end = HEADER_BYTES + len;
    if stream[end..].iter().any(|&b| b != 0) {
        return Err(BlobError::TrailingData);
    }
    Ok(stream[HEADER_BYTES..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_blob_round_trips_and_every_element_is_below_the_modulus() {
        let data: Vec<u8> = (0..MAX_BLOB_DATA_BYTES)
            .map(|i| (i * 131 % 256) as u8)
            .collect();
        let blob = encode(&data).unwrap();
        for element in blob.as_slice().chunks(32) {
            assert_eq!(element[0] & 0xc0, 0);
        }
        assert_eq!(decode(&blob).unwrap(), data);
        assert_eq!(MAX_BLOB_DATA_BYTES, 130_044);
    }

    #[test]
    fn bad_blobs_are_refused() {
        assert!(matches!(
            encode(&vec![0; MAX_BLOB_DATA_BYTES + 1]),
            Err(BlobError::TooLarge(_))
        ));
        let mut blob = encode(b"hello").unwrap();
        blob.as_mut_slice()[32] |= 0x80;
        assert_eq!(decode(&blob), Err(BlobError::FieldElement(1)));
        let mut blob = encode(b"hello").unwrap();
        blob.as_mut_slice()[131_000] = 1;
        assert_eq!(decode(&blob), Err(BlobError::TrailingData));
        let mut blob = encode(b"hello").unwrap();
        blob.as_mut_slice()[1] = 1;
        assert_eq!(decode(&blob), Err(BlobError::Version(1)));
        let mut blob = encode(b"").unwrap();
        blob.as_mut_slice()[2] = 0xff;
        assert!(matches!(decode(&blob), Err(BlobError::Length(_))));
    }

    #[test]
    fn data_over_several_blobs_splits_at_the_blob_capacity() {
        let data = vec![7u8; MAX_BLOB_DATA_BYTES * 2 + 10];
        let blobs = encode_all(&data);
        assert_eq!(blobs.len(), 3);
        assert_eq!(blobs_for(data.len()), 3);
        let joined: Vec<u8> = blobs.iter().flat_map(|b| decode(b).unwrap()).collect();
        assert_eq!(joined, data);
    }

    proptest! {
        #[test]
        fn any_payload_round_trips(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            prop_assert_eq!(decode(&encode(&data).unwrap()).unwrap(), data);
        }
    }
}
