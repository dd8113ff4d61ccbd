-- Test-only Prosody module (chatbx tests/interop): s2s to the domains in
-- `chatbx_test_routes = { ["domain"] = port }` goes to 127.0.0.1:port
-- instead of DNS, like chatbx's [s2s] static_routes. Tests never use DNS.
local service = require "net.resolvers.service";
local basic = require "net.resolvers.basic";
local manual = require "net.resolvers.manual";

if not service._chatbx_original_new then
	local original = service.new;
	service._chatbx_original_new = original;
	service.new = function (hostname, service_name, conn_type, extra)
		local routes = module:context("*"):get_option("chatbx_test_routes", {});
		local port = routes[hostname];
		if port then
			if service_name == "xmpp-server" then
				return basic.new("127.0.0.1", port, conn_type, extra);
			end
			return manual.new({}, conn_type, extra);
		end
		return original(hostname, service_name, conn_type, extra);
	end
end
