fn main() {
    std::process::exit(leakd_common::main(symres::command(), std::env::args_os(), symres::run));
}
