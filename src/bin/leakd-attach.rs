leakd_common::tool_main!(leakd_attach);
