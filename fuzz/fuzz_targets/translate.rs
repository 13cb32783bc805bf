#![no_main]

#[path = "../translate_check.rs"]
mod translate_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| translate_check::translate(data));
