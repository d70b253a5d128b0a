fn main() {
    std::process::exit(leakd_common::main(
        leakd_report::command(),
        std::env::args_os(),
        leakd_report::run,
    ));
}
