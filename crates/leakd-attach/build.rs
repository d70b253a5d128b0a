fn main() {
    // v3: the live-block table is updated with compare-and-swap.
    leakd_bpf_build::build_with("leakd-attach", &["-mcpu=v3"]);
}
