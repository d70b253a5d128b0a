//! Compiles LLVM's Itanium demangler (header-only, vendored in `vendor/`)
//! behind the C shim `shim.cpp`, with the C++ compiler `scripts/setup`
//! installs (g++). No C++ runtime library is linked: the shim needs none
//! (see its end), and the binaries must not depend on libstdc++ at run time.

fn main() {
    println!("cargo:rerun-if-changed=shim.cpp");
    println!("cargo:rerun-if-changed=vendor");
    cc::Build::new()
        .cpp(true)
        .cpp_link_stdlib(None)
        .std("c++17")
        .opt_level(2)
        .define("NDEBUG", None)
        .flag("-fno-exceptions")
        .flag("-fno-rtti")
        .warnings(false)
        .include("vendor")
        .file("shim.cpp")
        .compile("leakd_llvm_demangle");
}
