fn main() {
    std::process::exit(leakd_common::main(
        leakd_attach::command(),
        std::env::args_os(),
        leakd_attach::run,
    ));
}
