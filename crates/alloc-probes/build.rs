fn main() {
    // No object of its own: the programs are in bpf/alloc.bpf.h, compiled
    // into each tool's object; only the operation codes are mirrored.
    leakd_bpf_build::mirror("alloc");
}
