fn main() {
    leakd_bpf_build::mirror("unwind");
}
