fn main() {
    std::process::exit(leakd_common::main(syscount::command(), std::env::args_os(), syscount::run));
}
