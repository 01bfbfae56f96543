// SPDX-License-Identifier: MIT
// Stand-ins for what production gets from outside npm: tokens, price feeds, Multicall3, and the
// four Synthetix core contracts PerpsV2 calls but a keeper never depends on.
// Written for perp-keeper's devnet; deliberately minimal.
pragma solidity 0.8.24;

/// A plain ERC-20 whose owner may mint: stands in for USDC (6 decimals) on the devnet.
contract TestToken {
    string public name;
    string public symbol;
    uint8 public immutable decimals;
    address public immutable owner;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    constructor(string memory name_, string memory symbol_, uint8 decimals_) {
        name = name_;
        symbol = symbol_;
        decimals = decimals_;
        owner = msg.sender;
    }

    function mint(address to, uint256 amount) external {
        require(msg.sender == owner, "TT_NO");
        _mint(to, amount);
    }

    function _mint(address to, uint256 amount) internal {
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        _transfer(msg.sender, to, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            require(allowed >= amount, "ERC20: transfer amount exceeds allowance");
            allowance[from][msg.sender] = allowed - amount;
        }
        _transfer(from, to, amount);
        return true;
    }

    function _transfer(address from, address to, uint256 amount) internal {
        require(balanceOf[from] >= amount, "ERC20: transfer amount exceeds balance");
        balanceOf[from] -= amount;
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
    }
}

/// Wrapped ether with the WETH9 interface (deposit / withdraw / ERC-20).
contract WETH9 {
    string public constant name = "Wrapped Ether";
    string public constant symbol = "WETH";
    uint8 public constant decimals = 18;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event Deposit(address indexed to, uint256 value);
    event Withdrawal(address indexed from, uint256 value);

    receive() external payable {
        deposit();
    }

    function deposit() public payable {
        balanceOf[msg.sender] += msg.value;
        emit Deposit(msg.sender, msg.value);
    }

    function withdraw(uint256 amount) external {
        require(balanceOf[msg.sender] >= amount, "WETH: balance");
        balanceOf[msg.sender] -= amount;
        emit Withdrawal(msg.sender, amount);
        (bool ok, ) = msg.sender.call{value: amount}("");
        require(ok, "WETH: send");
    }

    function totalSupply() external view returns (uint256) {
        return address(this).balance;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        return transferFrom(msg.sender, to, amount);
    }

    function transferFrom(address from, address to, uint256 amount) public returns (bool) {
        require(balanceOf[from] >= amount, "WETH: balance");
        if (from != msg.sender && allowance[from][msg.sender] != type(uint256).max) {
            require(allowance[from][msg.sender] >= amount, "WETH: allowance");
            allowance[from][msg.sender] -= amount;
        }
        balanceOf[from] -= amount;
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
        return true;
    }
}

/// A settable price feed that answers both interfaces Perp v2 asks of a feed:
/// BaseToken's IPriceFeedDispatcher and CollateralManager's IPriceFeed. Every interval
/// returns the current price (a TWAP of a constant is that constant).
contract SettablePriceFeed {
    uint8 public immutable decimals;
    address public immutable owner;
    uint256 public price;

    event PriceSet(uint256 price);

    constructor(uint8 decimals_, uint256 price_) {
        decimals = decimals_;
        owner = msg.sender;
        price = price_;
    }

    function setPrice(uint256 price_) external {
        require(msg.sender == owner, "PF_NO");
        price = price_;
        emit PriceSet(price_);
    }

    function getPrice(uint256) external view returns (uint256) {
        return price;
    }

    function getDispatchedPrice(uint256) external view returns (uint256) {
        return price;
    }

    function dispatchPrice(uint256) external {}
}

/// The Multicall3 interface the keeper uses (aggregate3 and block getters), for chains that lack it.
contract Multicall3 {
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData) {
        uint256 length = calls.length;
        returnData = new Result[](length);
        for (uint256 i = 0; i < length; i++) {
            Call3 calldata call = calls[i];
            Result memory result = returnData[i];
            (result.success, result.returnData) = call.target.call(call.callData);
            if (!result.success && !call.allowFailure) {
                revert("Multicall3: call failed");
            }
        }
    }

    function getBlockNumber() external view returns (uint256) {
        return block.number;
    }

    function getCurrentBlockTimestamp() external view returns (uint256) {
        return block.timestamp;
    }

    function getEthBalance(address account) external view returns (uint256) {
        return account.balance;
    }

    function getBasefee() external view returns (uint256) {
        return block.basefee;
    }

    function getChainId() external view returns (uint256) {
        return block.chainid;
    }
}

/// The OP-stack GasPriceOracle's Fjord `getL1FeeUpperBound`, for anvil (which has no predeploy there).
/// Installed at 0x42..0F with anvil_setCode, so its constructor never runs: the L1 prices are plain
/// storage slots 0-3, set with anvil_setStorageAt like the real L1Block's.
contract GasPriceOracleStandIn {
    uint256 public l1BaseFee; // slot 0
    uint256 public blobBaseFee; // slot 1
    uint256 public baseFeeScalar; // slot 2
    uint256 public blobBaseFeeScalar; // slot 3

    function isFjord() external pure returns (bool) {
        return true;
    }

    function getL1FeeUpperBound(uint256 unsignedTxSize) external view returns (uint256) {
        uint256 txSize = unsignedTxSize + 68;
        uint256 flzUpperBound = txSize + txSize / 255 + 16;
        int256 estimated = -42_585_600 + 836_500 * int256(flzUpperBound);
        uint256 size = estimated < 100_000_000 ? 100_000_000 : uint256(estimated);
        return (size * (16 * l1BaseFee * baseFeeScalar + blobBaseFee * blobBaseFeeScalar)) / 1e12;
    }
}

// --- Synthetix: what PerpsV2 and FuturesMarketManager call outside themselves --------------------------

/// Oracle rates by currency key (18 decimals), settable by the owner; every change starts a new round.
contract ExchangeRatesStandIn {
    address public immutable owner;
    mapping(bytes32 => uint256) public rates;
    mapping(bytes32 => uint256) public rounds;

    event RateSet(bytes32 indexed currencyKey, uint256 rate);

    constructor() {
        owner = msg.sender;
    }

    function setRate(bytes32 currencyKey, uint256 rate) external {
        require(msg.sender == owner, "ER_NO");
        rates[currencyKey] = rate;
        rounds[currencyKey] += 1;
        emit RateSet(currencyKey, rate);
    }

    function rateAndInvalid(bytes32 currencyKey) external view returns (uint256 rate, bool isInvalid) {
        rate = rates[currencyKey];
        isInvalid = rate == 0;
    }

    function rateWithSafetyChecks(bytes32 currencyKey)
        external
        view
        returns (uint256 rate, bool broken, bool staleOrInvalid)
    {
        rate = rates[currencyKey];
        staleOrInvalid = rate == 0;
    }

    function getCurrentRoundId(bytes32 currencyKey) external view returns (uint256) {
        return rounds[currencyKey];
    }
}

/// No dynamic fee and nothing to settle: sUSD is the only synth on the devnet.
contract ExchangerStandIn {
    function dynamicFeeRateForExchange(bytes32, bytes32) external pure returns (uint256, bool) {
        return (0, false);
    }

    function settle(address, bytes32) external pure returns (uint256, uint256, uint256) {
        return (0, 0, 0);
    }
}

/// sUSD: an ERC-20 that FuturesMarketManager (the issuer) mints to and burns from.
contract SynthsUSDStandIn is TestToken {
    address public issuer;

    constructor() TestToken("Synth sUSD", "sUSD", 18) {}

    function setIssuer(address issuer_) external {
        require(msg.sender == owner, "TT_NO");
        issuer = issuer_;
    }

    function issue(address to, uint256 amount) external {
        require(msg.sender == issuer || msg.sender == owner, "sUSD: not the issuer");
        _mint(to, amount);
    }

    function burn(address from, uint256 amount) external {
        require(msg.sender == issuer, "sUSD: not the issuer");
        require(balanceOf[from] >= amount, "sUSD: burn exceeds balance");
        balanceOf[from] -= amount;
        totalSupply -= amount;
        emit Transfer(from, address(0), amount);
    }
}

/// Where fees go (Synthetix's FEE_ADDRESS) and how much was recorded.
contract FeePoolStandIn {
    address public constant FEE_ADDRESS = 0xfeEFEEfeefEeFeefEEFEEfEeFeefEEFeeFEEFEeF;
    uint256 public feesRecorded;

    function recordFeePaid(uint256 amount) external {
        feesRecorded += amount;
    }
}
