//! The ERC-20 workload's contract: loading the compiled artifact and encoding its calls.
//!
//! The artifact (`contracts/out/Token.json`, written by `scripts/compile-contracts.mjs`) carries
//! `abi` and `bytecode`. Calls are encoded from the artifact's ABI rather than from hard-coded
//! selectors, so a change to the contract's constructor fails here with a message that names the
//! parameter, instead of deploying garbage.

use std::path::{Path, PathBuf};

use alloy_dyn_abi::{DynSolType, DynSolValue, JsonAbiExt, Specifier};
use alloy_json_abi::{JsonAbi, Param};
use alloy_primitives::{Address, Bytes, U256};
use serde::Deserialize;

use super::error::BenchError;

/// Token name and symbol given to constructors that take them.
const TOKEN_NAME: &str = "rtchain bench token";
const TOKEN_SYMBOL: &str = "BENCH";
const TOKEN_DECIMALS: u8 = 18;

#[derive(Deserialize)]
struct Artifact {
    abi: JsonAbi,
    bytecode: Bytes,
    #[serde(rename = "deployedBytecode", default)]
    deployed_bytecode: Bytes,
}

/// A compiled ERC-20 token.
#[derive(Debug)]
pub(crate) struct Token {
    path: PathBuf,
    abi: JsonAbi,
    bytecode: Bytes,
    deployed_bytecode: Bytes,
}

impl Token {
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
            path: path.to_owned(),
            source,
        })?;
        let artifact: Artifact = serde_json::from_str(&text).map_err(|e| BenchError::Artifact {
            path: path.to_owned(),
            reason: format!("expected a JSON object with `abi` and `bytecode`: {e}"),
        })?;
        if artifact.bytecode.is_empty() {
            return Err(BenchError::Artifact {
                path: path.to_owned(),
                reason: "`bytecode` is empty (an interface or abstract contract?)".to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            abi: artifact.abi,
            bytecode: artifact.bytecode,
            deployed_bytecode: artifact.deployed_bytecode,
        })
    }

    /// The runtime code, for placing the token in a pre-state without deploying it. Empty when
    /// the artifact has no `deployedBytecode`.
    pub fn deployed_bytecode(&self) -> &Bytes {
        &self.deployed_bytecode
    }

    fn error(&self, reason: String) -> BenchError {
        BenchError::Artifact {
            path: self.path.clone(),
            reason,
        }
    }

    /// Creation code followed by the ABI-encoded constructor arguments. Each constructor
    /// parameter gets a value chosen by its type and name (see [`constructor_value`]), so
    /// `constructor(uint256 initialSupply)` and `constructor(string name_, string symbol_,
    /// uint256 initialSupply)` both work; the whole supply goes to the deployer.
    pub fn deploy_code(
        &self,
        initial_supply: U256,
        deployer: Address,
    ) -> Result<Bytes, BenchError> {
        let Some(constructor) = &self.abi.constructor else {
            return Ok(self.bytecode.clone());
        };
        let values = constructor
            .inputs
            .iter()
            .map(|param| constructor_value(param, initial_supply, deployer))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|reason| self.error(reason))?;
        let args = constructor
            .abi_encode_input(&values)
            .map_err(|e| self.error(format!("cannot encode the constructor arguments: {e}")))?;
        let mut code = Vec::with_capacity(self.bytecode.len() + args.len());
        code.extend_from_slice(&self.bytecode);
        code.extend_from_slice(&args);
        Ok(code.into())
    }

    /// Calldata of `transfer(address to, uint256 value)`.
    pub fn transfer_calldata(&self, to: Address, value: U256) -> Result<Bytes, BenchError> {
        let function = self
            .abi
            .function("transfer")
            .and_then(|overloads| {
                overloads
                    .iter()
                    .find(|f| f.signature() == "transfer(address,uint256)")
            })
            .ok_or_else(|| self.error("the ABI has no transfer(address,uint256)".to_owned()))?;
        function
            .abi_encode_input(&[DynSolValue::Address(to), DynSolValue::Uint(value, 256)])
            .map(Bytes::from)
            .map_err(|e| self.error(format!("cannot encode transfer: {e}")))
    }
}

/// The value the benchmark passes for one constructor parameter. Extend the match when the
/// token's constructor grows a parameter of a new kind.
fn constructor_value(
    param: &Param,
    initial_supply: U256,
    deployer: Address,
) -> Result<DynSolValue, String> {
    let ty = param.resolve().map_err(|e| {
        format!(
            "constructor parameter `{}`: unknown type `{}`: {e}",
            param.name, param.ty
        )
    })?;
    let name = param.name.to_ascii_lowercase();
    match ty {
        DynSolType::String if name.contains("symbol") => {
            Ok(DynSolValue::String(TOKEN_SYMBOL.to_owned()))
        }
        DynSolType::String => Ok(DynSolValue::String(TOKEN_NAME.to_owned())),
        DynSolType::Uint(bits) if name.contains("decimals") => {
            Ok(DynSolValue::Uint(U256::from(TOKEN_DECIMALS), bits))
        }
        DynSolType::Uint(256) => Ok(DynSolValue::Uint(initial_supply, 256)),
        DynSolType::Address => Ok(DynSolValue::Address(deployer)),
        _ => Err(format!(
            "constructor parameter `{} {}` has no benchmark value; add one in \
             src/bench/erc20.rs (constructor_value)",
            param.ty, param.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(abi: &str) -> Token {
        Token {
            path: PathBuf::from("test.json"),
            abi: serde_json::from_str(abi).expect("test ABI parses"),
            bytecode: Bytes::from_static(&[0x60, 0x00]),
            deployed_bytecode: Bytes::new(),
        }
    }

    #[test]
    fn transfer_calldata_has_the_erc20_selector() {
        let t = token(
            r#"[{"type":"function","name":"transfer","stateMutability":"nonpayable",
                "inputs":[{"name":"to","type":"address"},{"name":"value","type":"uint256"}],
                "outputs":[{"name":"","type":"bool"}]}]"#,
        );
        let data = t
            .transfer_calldata(Address::repeat_byte(0x11), U256::from(1))
            .expect("encodes");
        assert_eq!(&data[..4], &[0xa9, 0x05, 0x9c, 0xbb]);
        assert_eq!(data.len(), 4 + 32 + 32);
        assert_eq!(data[4 + 31 + 32], 1);
    }

    #[test]
    fn constructor_arguments_follow_the_abi() {
        let supply_only = token(
            r#"[{"type":"constructor","stateMutability":"nonpayable",
                "inputs":[{"name":"initialSupply","type":"uint256"}]}]"#,
        );
        let code = supply_only
            .deploy_code(U256::from(7), Address::ZERO)
            .expect("encodes");
        assert_eq!(code.len(), 2 + 32);
        assert_eq!(code[2 + 31], 7);

        let named = token(
            r#"[{"type":"constructor","stateMutability":"nonpayable",
                "inputs":[{"name":"name_","type":"string"},{"name":"symbol_","type":"string"},
                          {"name":"initialSupply","type":"uint256"}]}]"#,
        );
        let code = named
            .deploy_code(U256::from(7), Address::ZERO)
            .expect("encodes");
        // Three head words, then each string as a length word and one padded data word.
        assert_eq!(code.len(), 2 + 3 * 32 + 2 * 64);
        assert_eq!(code[2 + 2 * 32 + 31], 7);

        let odd = token(
            r#"[{"type":"constructor","stateMutability":"nonpayable",
                "inputs":[{"name":"flags","type":"bytes32"}]}]"#,
        );
        assert!(odd.deploy_code(U256::from(7), Address::ZERO).is_err());
    }
}
