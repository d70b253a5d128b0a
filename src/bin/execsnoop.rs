fn main() {
    std::process::exit(leakd_common::main(
        execsnoop::command(),
        std::env::args_os(),
        execsnoop::run,
    ));
}
