//! dag-pb nodes and the UnixFS `Data` they carry, as read from fetched or stored blocks.
#![no_main]

use agora_storage::blockstore::block_links;
use agora_storage::dagpb::PbNode;
use agora_storage::hash::{DAG_PB, cid_v1_sha256};
use agora_storage::unixfs::UnixFsData;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cid = cid_v1_sha256(DAG_PB, data);
    let links = block_links(&cid, data);
    let Ok(node) = PbNode::decode(&cid, data) else {
        assert!(links.is_err());
        return;
    };
    assert_eq!(
        links.expect("links of a decodable node"),
        node.links.iter().map(|l| l.cid).collect::<Vec<_>>()
    );
    let encoded = node.encode();
    assert_eq!(PbNode::decode(&cid, &encoded).expect("re-decodes"), node);
    if let Some(Ok(fs)) = node.data.as_deref().map(UnixFsData::decode) {
        assert_eq!(UnixFsData::decode(&fs.encode()).expect("re-decodes"), fs);
    }
    // The same bytes as a bare UnixFS Data message.
    if let Ok(fs) = UnixFsData::decode(data) {
        assert_eq!(UnixFsData::decode(&fs.encode()).expect("re-decodes"), fs);
    }
});
