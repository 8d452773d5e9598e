module github.com/microsandbox/libmicrosandbox_agent/bindings/go

go 1.19
