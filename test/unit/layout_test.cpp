#define BOOST_TEST_MODULE layout
#include <boost/test/unit_test.hpp>

#include "pcx/layout.hpp"

BOOST_AUTO_TEST_CASE(placeholder_grid_world_size) { BOOST_TEST(pcx::RankGrid({{"a", 2}, {"b", 3}}).world_size() == 6); }
