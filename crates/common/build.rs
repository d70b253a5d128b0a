fn main() {
    leakd_bpf_build::mirror("leakd");
}
