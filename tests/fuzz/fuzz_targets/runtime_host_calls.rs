//! A guest driving the runtime's `"agora"` host calls with arbitrary pointers, lengths and
//! memory (see `agora_runtime::fuzz::host_calls` for the input layout).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| agora_runtime::fuzz::host_calls(data));
