#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| taskmill_fuzz::python_pickle(data));
