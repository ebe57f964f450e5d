//! Rebuild when `bpf-linker` changes: the crate has an undeclared dependency on it.
//! Also ask bpf-linker (which does the code generation) for BPF ISA v3: the
//! rate limiter needs BPF_CMPXCHG and fetching atomic add (kernel >= 5.12).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo::rustc-link-arg-bins=--cpu-features=+alu32");
}
