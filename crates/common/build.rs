fn main() {
    leakd_bpf_build::mirror("leakd");
    leakd_bpf_build::mirror("mappings");
}
