//! Positional parameter parsing with geth's error messages ("missing value for required argument
//! 0", "invalid argument 1: ...", "too many arguments, want at most 2"), all code -32602.

use jsonrpsee::types::Params;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::error::{RpcResult, invalid_params};

/// The positional arguments of one call. Parsing the array once into raw slices bounds the work
/// per argument: each is deserialized only when the handler asks for it.
pub(crate) struct Args<'a> {
    raw: Vec<&'a RawValue>,
    next: usize,
}

impl<'a> Args<'a> {
    /// Splits `params` into at most `max` positional arguments. Absent params, `null` and `[]`
    /// mean no arguments; an object (by-name params) is refused, as geth does.
    pub(crate) fn new(params: &'a Params<'a>, max: usize) -> RpcResult<Self> {
        let raw: Vec<&'a RawValue> = match params.as_str() {
            None | Some("null") => Vec::new(),
            Some(json) => {
                serde_json::from_str(json).map_err(|_| invalid_params("non-array args"))?
            }
        };
        if raw.len() > max {
            return Err(invalid_params(format!(
                "too many arguments, want at most {max}"
            )));
        }
        Ok(Self { raw, next: 0 })
    }

    /// The next argument; missing or `null` is an error.
    pub(crate) fn required<T: Deserialize<'a>>(&mut self) -> RpcResult<T> {
        let index = self.next;
        match self.optional()? {
            Some(value) => Ok(value),
            None => Err(invalid_params(format!(
                "missing value for required argument {index}"
            ))),
        }
    }

    /// The next argument; missing or `null` is `None`.
    pub(crate) fn optional<T: Deserialize<'a>>(&mut self) -> RpcResult<Option<T>> {
        let index = self.next;
        self.next += 1;
        let Some(raw) = self.raw.get(index) else {
            return Ok(None);
        };
        serde_json::from_str::<Option<T>>(raw.get())
            .map_err(|e| invalid_params(format!("invalid argument {index}: {e}")))
    }
}

/// A QUANTITY that geth also accepts as a decimal (`math.HexOrDecimal64`): `"0x10"`, `"16"` or
/// `16`. Used for eth_feeHistory's block count and eth_sendRawTransactionSync's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HexOrDecimal(pub u64);

impl<'de> Deserialize<'de> for HexOrDecimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let parsed = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Some(n),
            Raw::Text(text) => match text
                .as_str()
                .strip_prefix("0x")
                .or_else(|| text.strip_prefix("0X"))
            {
                Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok(),
                Some(_) => None,
                None => text.parse().ok(),
            },
        };
        parsed
            .map(HexOrDecimal)
            .ok_or_else(|| serde::de::Error::custom("expected a hex (0x...) or decimal quantity"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_positional_args() {
        let params = Params::new(Some(r#"["0x10", null]"#));
        let mut args = Args::new(&params, 3).unwrap();
        assert_eq!(args.required::<HexOrDecimal>().unwrap(), HexOrDecimal(16));
        assert_eq!(args.optional::<u64>().unwrap(), None);
        assert_eq!(args.optional::<u64>().unwrap(), None);
    }

    #[test]
    fn geth_messages() {
        let params = Params::new(Some("[1, 2, 3]"));
        let err = Args::new(&params, 2).err().unwrap();
        assert_eq!(err.code(), -32602);
        assert_eq!(err.message(), "too many arguments, want at most 2");

        let params = Params::new(None);
        let mut args = Args::new(&params, 2).unwrap();
        let err = args.required::<u64>().unwrap_err();
        assert_eq!(err.message(), "missing value for required argument 0");

        let params = Params::new(Some(r#"["zz"]"#));
        let mut args = Args::new(&params, 2).unwrap();
        let err = args.required::<HexOrDecimal>().unwrap_err();
        assert!(
            err.message().starts_with("invalid argument 0:"),
            "{}",
            err.message()
        );

        let params = Params::new(Some(r#"{"a": 1}"#));
        assert_eq!(
            Args::new(&params, 2).err().unwrap().message(),
            "non-array args"
        );
    }

    #[test]
    fn hex_or_decimal() {
        for (json, want) in [("\"0x1f\"", 31), ("\"31\"", 31), ("31", 31)] {
            assert_eq!(serde_json::from_str::<HexOrDecimal>(json).unwrap().0, want);
        }
        for bad in ["\"0x\"", "\"-1\"", "-1", "\"1.5\"", "true"] {
            assert!(serde_json::from_str::<HexOrDecimal>(bad).is_err(), "{bad}");
        }
    }
}
