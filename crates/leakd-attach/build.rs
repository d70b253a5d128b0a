fn main() {
    leakd_bpf_build::build("leakd-attach");
}
