//! The UnixFS `Data` protobuf message carried in a dag-pb node's data field.

use crate::protobuf::{Reader, put_bytes, put_uint};
use crate::{Result, StorageError};

/// UnixFS node type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// Raw = 0.
    Raw,
    /// Directory = 1.
    Directory,
    /// File = 2.
    File,
    /// Metadata = 3.
    Metadata,
    /// Symlink = 4.
    Symlink,
    /// HAMTShard = 5.
    HamtShard,
}

impl DataType {
    fn code(self) -> u64 {
        match self {
            DataType::Raw => 0,
            DataType::Directory => 1,
            DataType::File => 2,
            DataType::Metadata => 3,
            DataType::Symlink => 4,
            DataType::HamtShard => 5,
        }
    }

    fn from_code(code: u64) -> Result<Self> {
        Ok(match code {
            0 => DataType::Raw,
            1 => DataType::Directory,
            2 => DataType::File,
            3 => DataType::Metadata,
            4 => DataType::Symlink,
            5 => DataType::HamtShard,
            c => {
                return Err(StorageError::decode(
                    "unixfs Data",
                    format!("unknown type {c}"),
                ));
            }
        })
    }
}

/// The UnixFS `Data` message (fields we use: Type, Data, filesize, blocksizes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixFsData {
    /// Node type.
    pub kind: DataType,
    /// Inline file bytes (leaves).
    pub data: Option<Vec<u8>>,
    /// Total file bytes below this node.
    pub filesize: Option<u64>,
    /// File bytes under each child link, in link order.
    pub blocksizes: Vec<u64>,
}

impl UnixFsData {
    /// Encodes in field order, as gogo-protobuf (Kubo) does; blocksizes are unpacked (proto2).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.data.as_ref().map_or(0, Vec::len) + 16 + self.blocksizes.len() * 4,
        );
        put_uint(&mut out, 1, self.kind.code());
        if let Some(data) = &self.data {
            put_bytes(&mut out, 2, data);
        }
        if let Some(size) = self.filesize {
            put_uint(&mut out, 3, size);
        }
        for size in &self.blocksizes {
            put_uint(&mut out, 4, *size);
        }
        out
    }

    /// Decodes a UnixFS `Data` message; accepts packed or unpacked blocksizes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut kind = None;
        let mut out = UnixFsData {
            kind: DataType::Raw,
            data: None,
            filesize: None,
            blocksizes: Vec::new(),
        };
        let mut r = Reader::new(bytes, "unixfs Data");
        while let Some((field, value)) = r.next_field()? {
            match field {
                1 => kind = Some(DataType::from_code(value.varint("unixfs Type")?)?),
                2 => out.data = Some(value.bytes("unixfs Data")?.to_vec()),
                3 => out.filesize = Some(value.varint("unixfs filesize")?),
                4 => match value {
                    crate::protobuf::Value::Varint(v) => out.blocksizes.push(v),
                    crate::protobuf::Value::Bytes(mut packed) => {
                        while !packed.is_empty() {
                            let (v, used) =
                                crate::protobuf::get_varint(packed, "unixfs blocksizes")?;
                            out.blocksizes.push(v);
                            packed = &packed[used..];
                        }
                    }
                },
                // hashType, fanout, mode, mtime: not needed to read file bytes.
                _ => {}
            }
        }
        out.kind = kind.ok_or_else(|| StorageError::decode("unixfs Data", "missing Type"))?;
        Ok(out)
    }
}
