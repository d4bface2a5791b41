//! Prints the CID `ipfs add` would give each file: `cargo run -p agora-storage --example cid --
//! [--cid-version 1] FILE...`. Used by `tests/kubo_interop.py`.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::BufReader;

use agora_storage::{ImportOptions, MemoryBlockStore, import_file};

fn main() {
    let mut options = ImportOptions::default();
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--cid-version") {
        args.next();
        if args.next().as_deref() == Some("1") {
            options = ImportOptions::v1();
        }
    }
    for path in args {
        // A fresh store per file keeps memory bounded to one file's blocks.
        let store = MemoryBlockStore::new();
        let file = BufReader::new(File::open(&path).unwrap());
        let cid = import_file(&store, file, options).unwrap();
        println!("{cid} {path}");
    }
}
