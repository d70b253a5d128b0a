leakd_common::tool_main!(syscount);
