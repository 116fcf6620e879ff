//! `safegate keys new`: a random API key and the config entry that holds its hash.

use anyhow::Result;
use rand::RngCore;

use crate::cli::KeysCommand;

pub fn run(cmd: &KeysCommand) -> Result<()> {
    let KeysCommand::New { id, group } = cmd;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let key: String = std::iter::once("sg-".to_string())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let hash: String = crate::config::sha256(&key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("# The key (shown once; the server keeps only its hash): {key}");
    println!("[[keys]]");
    println!("id = {}", toml_string(id));
    println!("sha256 = \"{hash}\"");
    if let Some(g) = group {
        println!("group = {}", toml_string(g));
    }
    Ok(())
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}
